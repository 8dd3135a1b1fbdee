"""``vitron app``: a local Gradio page over one :class:`~vitron.assistant.Assistant` conversation.

The page has a message box, an optional image with an optional box region drawn on it
(``x1,y1,x2,y2`` in pixels or in [0, 1]), the conversation (the images the user attached, a
chat-model planner's replies as they are generated, then answers that list the calls that ran
and their outcomes, and the images the calls wrote), a gallery of the images the specialists
wrote and a list of every output file. :class:`ChatSession` holds the logic and is tested
without a browser; :func:`build_app` lays out the page and wires it to the session. One process
serves one conversation (a local tool, not a multi-user server): every event goes through one
queue of concurrency 1, so turns and resets run one at a time. Serve it with
:func:`launch_app` (it lets Gradio serve the output folder). The page names its model: a
Vitron with random weights (``vitron tiny-model``) is named so, and ``vitron app`` without
``--model`` or ``--planner`` says which planner it runs (:mod:`vitron.planners.default`).
"""

from __future__ import annotations

import functools
import json
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from common_kernels.runtime.app import import_gradio, page, shows_bad_input
from vitron.assistant import Assistant, Turn, check_media
from vitron.io import save_image, write_json
from vitron.regions import Region, RegionError, check_regions, parse_box

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


def format_progress(replies: Sequence[str]) -> str:
    """The assistant's chat message while its turn runs: each reply of a chat-model planner as
    far as it is written, then whether its calls run; a note that it works otherwise."""
    if not replies:
        return "*working...*"
    shown = "\n\n".join(f"```json\n{text}\n```" for text in replies)
    try:  # the grammar ends a reply at its closing brace: a whole object is a finished reply
        data = json.loads(replies[-1])
    except json.JSONDecodeError:
        return shown
    return shown + ("\n\n*running the calls...*" if "calls" in data else "")


class TurnStopped(Exception):
    """The page stopped (:meth:`ChatSession.close`) while a planner wrote a reply."""


class ChatSession:
    """One conversation: the assistant, the chat messages shown and the files written.

    Args:
        assistant: the assistant that answers (an :class:`~vitron.assistant.Assistant`, or a
            :class:`~vitron.planners.PlannerAssistant`, whose replies stream into the page);
            its ``router`` writes into its output folder.
        output_dir: where every turn's record ``turn_<n>.json`` goes.
        note: what the page says about the model (Markdown), or ``""``.
    """

    def __init__(self, assistant: Assistant, output_dir: str | Path, note: str = "") -> None:
        self.assistant = assistant
        self.output_dir = Path(output_dir)
        self.note = note
        # held for a whole turn, by its worker thread: a turn whose page went away still ends
        # before the next one (or a reset) starts
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.reset()

    def close(self, wait_s: float = 2.0) -> None:
        """Stop a turn in progress, for a prompt exit: a chat-model planner stops at its next
        token (a specialist's call runs to its end); waits up to ``wait_s`` seconds for it.

        Args:
            wait_s: seconds to wait for the turn to end, >= 0.
        """
        self.closing.set()
        if self.lock.acquire(timeout=wait_s):
            self.lock.release()

    def reset(self) -> None:
        """Start a new conversation (files already written stay on disk)."""
        with self.lock:
            self.assistant.reset()
            self.messages: list[dict[str, Any]] = []
            self.files: list[Path] = []
            self.turns = 0

    @property
    def streams(self) -> bool:
        """Whether the assistant tells its replies' text as it writes them (a chat-model
        planner's ``chat`` takes ``on_text``)."""
        return hasattr(self.assistant, "planner")

    @property
    def pictures(self) -> list[str]:
        """Paths of the image files written so far, oldest first."""
        return [str(p) for p in self.files if p.suffix.lower() in IMAGE_SUFFIXES]

    def submit(
        self, text: str, image: Image.Image | None = None, box: str = ""
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Run one turn to its end: :meth:`stream`'s last state."""
        *_, last = self.stream(text, image, box)
        return last

    def stream(
        self, text: str, image: Image.Image | None = None, box: str = ""
    ) -> Iterator[tuple[list[dict[str, Any]], list[str], list[str]]]:
        """Run one turn, yielding the page's state as it goes: the user's message (an attached
        image, written to ``turn_<n>_image.png``, shown before it) with the answer pending, then
        each time a chat-model planner's reply grows (:func:`format_progress`), and last the
        answer with one line per call (:func:`format_answer`) and the images the calls wrote.

        Args:
            text: the user's message (not empty).
            image: an image joining this message, or None.
            box: a region ``x1,y1,x2,y2`` on that image (or, without one, on the latest image
                of the conversation); empty for none.

        Yields:
            (chat messages as ``{"role", "content"}`` dicts, the content a text or, for an
            image, ``{"path", "alt_text"}``; image paths for the gallery; every output file
            path).

        Raises:
            ValueError: empty message, an empty image, a box without any image, or a malformed
                box or one outside its image, before anything is yielded; a bad input the
                assistant finds later after the conversation as it was is yielded.
        """
        text = text.strip()
        if not text:
            raise ValueError("the message is empty: write what you want first")
        images = [] if image is None else [image.convert("RGB")]
        check_media(images, ())
        regions = [self._region(box, images)] if box.strip() else []
        check_regions(regions, [*self.assistant.inputs.images, *images])
        self.lock.acquire()  # released by the turn's worker thread when the turn has ended
        events: queue.Queue[tuple[Any, Any]] = queue.Queue()
        try:
            asked: list[dict[str, Any]] = []
            for picture in images:
                name = f"turn_{self.turns + 1:03d}_image.png"
                path = save_image(picture, self.output_dir / name)
                alt = f"your image, {picture.width}x{picture.height}"
                asked.append({"role": "user", "content": {"path": str(path), "alt_text": alt}})
            asked.append({"role": "user", "content": text})
            names = [Path(m["content"]["path"]).name for m in asked[:-1]]
            threading.Thread(
                target=self._work, args=(text, images, regions, names, asked, events),
                name="vitron-turn", daemon=True,  # a page stopped mid-turn exits at once
            ).start()  # fmt: skip
        except BaseException:
            self.lock.release()
            raise
        replies: list[str] = []
        while True:
            yield self._state([*asked, assistant_text(format_progress(replies))])
            kind, value = events.get()
            while kind not in ("done", "error"):
                while len(replies) <= kind:
                    replies.append("")
                replies[kind] += value
                if events.empty():
                    break
                kind, value = events.get()
            if kind == "error":
                yield self._state([])  # the conversation as it was
                raise value
            if kind == "done":
                yield self._state([])
                return

    def _work(self, text, images, regions, names, asked, events: queue.Queue) -> None:
        """The turn, in its own thread: the assistant's chat, then the session's record of it;
        tells ``events`` each reply's pieces ``(k, piece)``, then ``("done", None)`` or
        ``("error", exception)``."""
        try:
            streaming = {"names": names, "on_text": functools.partial(self._told, events)}
            turn = self.assistant.chat(
                text, images, (), regions, **(streaming if self.streams else {})
            )
            self.turns += 1
            write_json(self.output_dir / f"turn_{self.turns:03d}.json", turn.to_dict())
            pictures = [p for p in turn.files if p.suffix.lower() in IMAGE_SUFFIXES]
            self.messages += [*asked, assistant_text(format_answer(turn))]
            self.messages += [
                {"role": "assistant", "content": {"path": str(p), "alt_text": p.stem}}
                for p in pictures
            ]
            self.files += turn.files
            events.put(("done", None))
        except BaseException as error:  # shown in the page (a ValueError as a bad input)
            events.put(("error", error))
        finally:
            self.lock.release()

    def _told(self, events: queue.Queue, k: int, piece: str) -> None:
        """A piece of the turn's k-th reply; raising here stops the planner's ``generate``."""
        if self.closing.is_set():
            raise TurnStopped("the page stopped while the planner wrote its reply")
        events.put((k, piece))

    def _state(
        self, pending: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        return [*self.messages, *pending], self.pictures, [str(p) for p in self.files]

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


def assistant_text(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def build_app(session: ChatSession, title: str = "Vitron") -> Any:
    """The Gradio page of ``session`` (a ``gradio.Blocks``; call ``.launch()`` to serve it)."""
    gr = import_gradio("vitron[app]")

    def send(text: str, image: Image.Image | None, box: str):
        for messages, pictures, paths in session.stream(text, image, box or ""):
            yield messages, pictures, paths, "", None, ""  # the inputs are cleared

    def new_conversation():
        session.reset()
        return [], [], []

    intro = (
        "Ask, segment, generate, edit or restore. An image and a box join your next message; the "
        "specialists' images appear on the right."
    )
    model = getattr(session.assistant, "model", None)  # a PlannerAssistant has a planner instead
    random = model is not None and model.config.random_weights
    note = "\n\n".join(n for n in (RANDOM_NOTE if random else "", session.note) if n)
    with page(title, intro, note) as demo:
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


def serve(session: ChatSession, *, host: str, port: int, share: bool) -> None:
    """Serve the page of ``session`` until Ctrl-C or SIGTERM, as every package's ``app`` command
    does (``common_kernels.runtime.app.launch_blocks``), then stop a turn in progress
    (:meth:`ChatSession.close`), so that the process exits at once.

    Args:
        session: the conversation.
        host: the address to serve on.
        port: the TCP port, in [1, 65535].
        share: also open a public Gradio link.
    """
    from common_kernels.runtime import app as runtime_app

    try:
        runtime_app.launch_blocks(
            build_app(session), host=host, port=port, share=share,
            allowed_paths=served_folders(session),
        )  # fmt: skip
    finally:
        session.close()


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
