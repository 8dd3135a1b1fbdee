"""``vitron app``: a local Gradio page over one :class:`~vitron.assistant.Assistant` conversation.

The page has a message box, an optional image with an optional box region drawn on it
(``x1,y1,x2,y2`` in pixels or in [0, 1]), the conversation (the images the user attached, and
answers that list the calls that ran and their outcomes), a gallery of the images the
specialists wrote and a list of every output file.
:class:`ChatSession` holds the logic and is tested without a browser; :func:`build_app` lays
out the page and wires it to the session. One process serves one conversation (a local tool,
not a multi-user server): every event goes through one queue of concurrency 1, so turns and
resets run one at a time. Serve it with :func:`launch_app` (it lets Gradio serve the output
folder). A model with random weights (``vitron tiny-model``) is named so at the top of the
page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from common_kernels.runtime.app import import_gradio, page, shows_bad_input
from vitron.assistant import Assistant, Turn
from vitron.io import save_image, write_json
from vitron.regions import Region, RegionError, parse_box

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
RANDOM_NOTE = (
    "**This model's weights are random** (a tiny model from `vitron tiny-model`, for trying the "
    "page): its replies are noise, not answers."
)


def format_answer(turn: Turn) -> str:
    """The assistant's chat message: its answer, then one markdown line per call it ran."""
    lines = [turn.answer or "(no answer)"]
    for round_ in turn.outcomes:
        for outcome in round_:
            lines.append(f"- `{outcome.call.id}` {outcome.call.task}: {outcome.summary}")
    if turn.parse_error:
        lines.append(f"- the reply's calls could not be parsed: {turn.parse_error}")
    if turn.unexecuted is not None:
        lines.append("- the final answer asked for more calls than one turn runs; not run")
    return "\n".join(lines)


class ChatSession:
    """One conversation: the assistant, the chat messages shown and the files written.

    Args:
        assistant: the assistant that answers; its ``router`` writes into its output folder.
        output_dir: where every turn's record ``turn_<n>.json`` goes.
    """

    def __init__(self, assistant: Assistant, output_dir: str | Path) -> None:
        self.assistant = assistant
        self.output_dir = Path(output_dir)
        self.reset()

    def reset(self) -> None:
        """Start a new conversation (files already written stay on disk)."""
        self.assistant.reset()
        self.messages: list[dict[str, Any]] = []
        self.files: list[Path] = []
        self.turns = 0

    @property
    def pictures(self) -> list[str]:
        """Paths of the image files written so far, oldest first."""
        return [str(p) for p in self.files if p.suffix.lower() in IMAGE_SUFFIXES]

    def submit(
        self, text: str, image: Image.Image | None = None, box: str = ""
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Run one turn; an attached image is written to ``turn_<n>_image.png`` in the output
        folder and shown in the conversation before the message.

        Args:
            text: the user's message (not empty).
            image: an image joining this message, or None.
            box: a region ``x1,y1,x2,y2`` on that image (or, without one, on the latest image
                of the conversation); empty for none.

        Returns:
            (chat messages as ``{"role", "content"}`` dicts, the content a text or, for an
            attached image, ``{"path", "alt_text"}``; image paths for the gallery; every
            output file path).

        Raises:
            ValueError: empty message, a box without any image, or a malformed box.
        """
        text = text.strip()
        if not text:
            raise ValueError("the message is empty: write what you want first")
        images = [] if image is None else [image.convert("RGB")]
        regions = [self._region(box, images)] if box.strip() else []
        turn = self.assistant.chat(text, images, (), regions)
        self.turns += 1
        write_json(self.output_dir / f"turn_{self.turns:03d}.json", turn.to_dict())
        for picture in images:
            path = save_image(picture, self.output_dir / f"turn_{self.turns:03d}_image.png")
            alt = f"your image, {picture.width}x{picture.height}"
            self.messages.append({"role": "user", "content": {"path": str(path), "alt_text": alt}})
        self.messages += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": format_answer(turn)},
        ]
        self.files += turn.files
        return list(self.messages), self.pictures, [str(p) for p in self.files]

    def _region(self, box: str, new_images: list[Image.Image]) -> Region:
        """A box region on the new image, or else on the conversation's latest image."""
        every = [*self.assistant.inputs.images, *new_images]
        if not every:
            raise ValueError("a box region needs an image: add one with the message")
        target = len(every) - 1
        try:
            return Region(parse_box(box, every[target].width, every[target].height), target)
        except RegionError as err:
            raise ValueError(str(err)) from None


def build_app(session: ChatSession, title: str = "Vitron") -> Any:
    """The Gradio page of ``session`` (a ``gradio.Blocks``; call ``.launch()`` to serve it)."""
    gr = import_gradio("vitron[app]")

    def send(text: str, image: Image.Image | None, box: str):
        messages, pictures, paths = session.submit(text, image, box or "")
        return messages, pictures, paths, "", None, ""  # the inputs are cleared

    def new_conversation():
        session.reset()
        return [], [], []

    intro = (
        "Ask, segment, generate, edit or restore. An image and a box join your next message; the "
        "specialists' images appear on the right."
    )
    model = getattr(session.assistant, "model", None)  # a PlannerAssistant has a planner instead
    random = model is not None and model.config.random_weights
    with page(title, intro, RANDOM_NOTE if random else "") as demo:
        with gr.Row():
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="conversation", height=480)
                message = gr.Textbox(
                    label="message", placeholder="segment the dog and make it a cat"
                )
                with gr.Row():
                    send_button = gr.Button("send", variant="primary")
                    clear_button = gr.Button("new conversation")
            with gr.Column(scale=1):
                image = gr.Image(label="image (joins your next message)", type="pil")
                box = gr.Textbox(label="region box on that image: x1,y1,x2,y2 (px or 0-1)")
                gallery = gr.Gallery(label="images written by the specialists")
                files = gr.File(label="all output files", file_count="multiple")
        outputs = [chat, gallery, files, message, image, box]
        # one queue for every event: a turn and a reset never touch the session at once
        one_at_a_time = {"concurrency_id": "session", "concurrency_limit": 1}
        sent = shows_bad_input(send, (ValueError,))
        send_button.click(sent, [message, image, box], outputs, **one_at_a_time)
        message.submit(sent, [message, image, box], outputs, **one_at_a_time)
        clear_button.click(new_conversation, None, [chat, gallery, files], **one_at_a_time)
    return demo


def launch_app(session: ChatSession, **launch_options: Any) -> Any:
    """Serve the page of ``session`` (Gradio may serve files from its output folders).

    Args:
        session: the conversation.
        **launch_options: ``gradio.Blocks.launch`` options (``server_port``, ``share``, ...).

    Returns:
        The running ``gradio.Blocks`` (``launch`` blocks unless ``prevent_thread_lock``).
    """
    demo = build_app(session)
    demo.launch(allowed_paths=[str(f.resolve()) for f in served_folders(session)], **launch_options)
    return demo


def served_folders(session: ChatSession) -> list[Path]:
    """The folders the page shows files from: the conversation's and the specialists' outputs."""
    return sorted({session.output_dir, Path(session.assistant.router.output_dir)})
