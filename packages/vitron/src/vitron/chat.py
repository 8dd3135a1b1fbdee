"""``vitron chat``: a conversation on a terminal, one message or command per line.

Commands add images, videos and boxes to the next message, reset the conversation or quit; each
turn's outcome is printed (:func:`print_turn`) and written as ``turn_NNN.json``. An input that
cannot be used is reported and the conversation goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from vitron.io import load_image, load_video, printable, write_json
from vitron.options import one_line, parse_region

CHAT_HELP = """commands: /image PATH, /video PATH, /box x1,y1,x2,y2[@K], /reset, /quit
(images, videos and boxes given this way join your next message)"""


def print_turn(turn) -> None:
    for round_ in turn.outcomes:
        for o in round_:
            print(f"  [{o.call.id}] {o.call.task}: {o.status} - {o.summary}")
            for path in o.files:
                print(f"      {path}")
    if turn.parse_error:
        print(
            f"warning: the reply's calls could not be parsed ({turn.parse_error})", file=sys.stderr
        )
    if turn.unexecuted is not None:
        print(
            "warning: the final answer wrote more calls than --max-rounds allows; not run",
            file=sys.stderr,
        )
    print(printable(turn.answer))


def chat_loop(
    assistant, output: str | Path, images: list, videos: list, regions: list,
    stdin: Iterable[str] | None = None,
) -> int:  # fmt: skip
    """Converse until ``/quit`` or the end of ``stdin``; returns the exit status (0).

    Args:
        assistant: an opened :class:`~vitron.assistant.Assistant`.
        output: the folder of the ``turn_NNN.json`` files.
        images, videos, regions: the checked inputs of the first message.
        stdin: the lines to read (default: ``sys.stdin``).
    """
    stdin = stdin or sys.stdin
    print(CHAT_HELP)
    turns = 0
    pending_images, pending_videos, pending_regions = list(images), list(videos), list(regions)
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command == "/quit":
                break
            if command == "/reset":
                assistant.reset()
                pending_images, pending_videos, pending_regions = [], [], []
                print("(conversation reset)")
            elif command == "/image":
                pending_images.append(load_image(rest.strip()))
                print(
                    f"(image $image{len(assistant.inputs.images) + len(pending_images) - 1} added)"
                )
            elif command == "/video":
                pending_videos.append(load_video(rest.strip()))
                print("(video added)")
            elif command == "/box":
                every = [*assistant.inputs.images, *pending_images]
                pending_regions.append(parse_region("box", rest.strip(), every, 8.0, "/box"))
                print("(region added)")
            elif command.startswith("/"):
                print(f"unknown command {command}; {CHAT_HELP}")
            else:
                pending = (pending_images, pending_videos, pending_regions)
                pending_images, pending_videos, pending_regions = [], [], []  # used or dropped
                turn = assistant.chat(line, *pending, progress=True)
                turns += 1
                write_json(Path(output) / f"turn_{turns:03d}.json", turn.to_dict())
                print_turn(turn)
                for outcome in turn.failed:
                    print(f"error: {outcome.failure()}")
        except (FileNotFoundError, IsADirectoryError, ValueError) as err:  # report, go on
            print(f"error: {one_line(err)}")
    return 0
