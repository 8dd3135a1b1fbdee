"""What every package's Gradio page (``<package> app``) shares. Standard library only.

Gradio is imported when a page is built (:func:`import_gradio`), never when this module is: a
package's command and API work without its ``app`` extra. A bad input shows the API's one-line
message in the page (:func:`error_text`, through :func:`shows_bad_input`), never a traceback;
:func:`page` opens every page the same way (title, what it does, what model it serves);
:func:`launch_blocks` serves a page as every ``app`` command does (:func:`check_port` first).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from common_kernels.runtime.errors import InvalidArgument

PORTS = (1, 65535)


def import_gradio(install_hint: str) -> ModuleType:
    """The ``gradio`` module, or an ``ImportError`` that says how to install it.

    Args:
        install_hint: what to install, e.g. ``"semanir[app]"``.

    Raises:
        ImportError: ``needs gradio: pip install '<install_hint>'`` (a command prints it as a
            usage error).
    """
    try:
        return importlib.import_module("gradio")
    except ImportError as error:
        raise ImportError(f"needs gradio: pip install '{install_hint}'") from error


def error_text(exc: BaseException) -> str:
    """The one line a page shows for a bad input: the first line of the API's message, an
    :class:`~common_kernels.runtime.errors.InvalidArgument` as a Python user reads it
    (``image: must be RGB or grayscale, got mode CMYK``), or the error's type when it has none.

    Args:
        exc: the error the API raised.
    """
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def shows_bad_input(
    handler: Callable[..., Any],
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> Callable[..., Any]:
    """``handler`` of a page event whose bad inputs (``errors``) end as a ``gradio.Error`` with
    their :func:`error_text`: one line in the page, no traceback in the log. A generator
    handler (a page showing steps as they finish) stays a generator.

    Args:
        handler: the event's function (its signature, ``gr.Progress`` default included, is
            what Gradio reads).
        errors: the exception types that mean a bad input.
    """
    gr = importlib.import_module("gradio")

    def shown(error: BaseException) -> Exception:
        return gr.Error(error_text(error), print_exception=False)

    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def steps(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from handler(*args, **kwargs)
            except errors as error:
                raise shown(error) from None

        return steps

    @functools.wraps(handler)
    def handle(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except errors as error:
            raise shown(error) from None

    return handle


@contextlib.contextmanager
def page(title: str, intro: str, note: str = "") -> Iterator[Any]:
    """A ``gradio.Blocks`` titled ``title`` that opens with a heading, ``intro`` (what the page
    does) and ``note`` (the model it serves, and which hub model it would use); lay the page
    out inside the ``with`` block.

    Args:
        title: the page's title and heading.
        intro: one paragraph (Markdown).
        note: a second paragraph, or ``""``.
    """
    gr = importlib.import_module("gradio")
    with gr.Blocks(title=title) as blocks:
        gr.Markdown(f"# {title}\n{intro}" + (f"\n\n{note}" if note else ""))
        yield blocks


def check_port(port: int) -> int:
    """``port`` when it is a TCP port number, in [1, 65535].

    Raises:
        InvalidArgument: (``port``) another value.
    """
    low, high = PORTS
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= high:
        raise InvalidArgument("port", f"must be in [{low}, {high}], got {port!r}")
    return port


def launch_blocks(
    blocks: Any,
    *,
    host: str,
    port: int,
    share: bool,
    allowed_paths: Sequence[str | Path] = (),
    share_flag: str = "--share",
) -> None:
    """Serve a ``gradio.Blocks`` until interrupted (what ``<package> app`` does), then stop
    the server and leave the process ready to exit at once.

    The process's objects are frozen out of the garbage collector once the page is done: the
    interpreter's last collection otherwise walks every object of torch, Gradio and their
    imports, which took 2-5 s of a page's exit after Ctrl-C or SIGTERM on a 2-core machine. The
    server stops without waiting for open connections: a browser's event stream, open while
    a page streams an answer, otherwise held the exit 5 s.

    Args:
        blocks: the page.
        host: the address to serve on (``"127.0.0.1"``: this machine only).
        port: the TCP port.
        share: also open a public Gradio link.
        allowed_paths: folders the page may serve files from (its output folders).
        share_flag: how the command asks for a public link (printed under the page's address).

    Raises:
        InvalidArgument: (``port``) not a TCP port number, before anything is served.
    """
    check_port(port)
    try:
        # quiet: Gradio's own lines speak of Python (``set share=True in launch()``); the
        # command's users read its flag instead
        _, local, public = blocks.launch(
            server_name=host,
            server_port=port,
            share=share,
            allowed_paths=[str(Path(p).resolve()) for p in allowed_paths],
            quiet=True,
            prevent_thread_lock=True,
        )
        print(f"Running on local URL:  {local}", flush=True)
        print(f"Running on public URL: {public}" if public else f"For a public link: {share_flag}")
        while getattr(blocks, "is_running", False):  # until Ctrl-C or SIGTERM
            time.sleep(0.2)
    finally:
        # no graceful wait for open connections: a browser's event stream (a page streaming
        # its answer) held uvicorn's shutdown, and the exit, until Gradio's 5 s join timeout
        server = getattr(blocks, "server", None)
        if server is not None:
            server.force_exit = True
        blocks.close()
        gc.freeze()
