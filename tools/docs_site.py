"""The monorepo's documentation site (MkDocs Material + mkdocstrings), built and checked.

    python tools/docs_site.py build            # strict: a broken link, anchor or reference fails
    python tools/docs_site.py check            # the built site in Chromium through Playwright
    python tools/docs_site.py gallery          # regenerate docs/gallery/ from ../shared/data

Why MkDocs and not Sphinx: every guide is already Markdown (packages/*/docs/*.md, the READMEs)
and every docstring is Google style with ``Args:``; MkDocs reads both as they are (mkdocstrings'
python handler parses Google docstrings statically with griffe, without importing torch),
where Sphinx would need the pages converted to reStructuredText or run through MyST.

``build`` assembles the site's source under ``build/docs-site/src`` (ignored by git) from what
is committed, without copying Markdown into the repository: ``docs/`` at the root (the home
page and the gallery), each package's ``docs/*.md`` pages and its README as the package's
getting-started page (links to GitHub rewritten to the site's pages), a CLI reference generated
from each package's argparse parsers and an API reference of mkdocstrings blocks over each
``__all__`` (tools/docs_reference.py). It writes the nav into ``build/docs-site/mkdocs.yml``,
which takes everything else from the root ``mkdocs.yml``, and runs ``mkdocs build --strict``
into ``build/docs-site/site``.

``check`` serves that folder on 127.0.0.1 and opens every page in Chromium (Debian's
``/usr/bin/chromium``, or ``$CHROMIUM``): each page must load (HTTP 200, no JavaScript error)
with its title, every internal link must lead to a page or file of the site and every
``#anchor`` to an element of that page, and the search box must find a CLI option (``--tile``,
typed as ``tile``: Material reads a leading ``-`` as "without") in semanir's CLI reference.
One screenshot per page lands in ``outputs/docs-site/`` (or ``--screenshots DIR``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

try:
    import yaml
except ModuleNotFoundError:  # build and check say so in one line (missing_for_build)
    yaml = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docs_reference  # noqa: E402  (a sibling script, not a package)

SITE = ROOT / "build" / "docs-site"
SOURCE = SITE / "src"
OUTPUT = SITE / "site"
CONFIG = SITE / "mkdocs.yml"
SCREENSHOTS = ROOT / "outputs" / "docs-site"
REPOSITORY = "https://github.com/vision-kernels/monorepo"
BLOB = f"{REPOSITORY}/blob/main/"
RAW = "https://raw.githubusercontent.com/vision-kernels/monorepo/main/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
# The pages of the home tab, in order: the root docs/ pages a reader starts from.
HOME_PAGES = (("Home", "index.md"), ("Developing the monorepo", "development.md"))
# `semanir restore --tile`: the search must find its row in the CLI reference. Material's search
# reads a leading "-" as "without this word" (a query "--tile" finds nothing anywhere), so the
# check types the flag's name, as a reader must.
SEARCH_TERM = "tile"
SEARCH_FLAG = "--tile"
SEARCH_PAGE = "semanir/cli-reference/"


def package_names() -> list[str]:
    """The package folders, in the order of the monorepo's design: kernels first."""
    found = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))
    return sorted(found, key=lambda name: (name != "common-kernels", name))


def guide_pages(package: str) -> list[Path]:
    """The package's committed docs pages, ``docs/*.md``."""
    return sorted((ROOT / "packages" / package / "docs").glob("*.md"))


# --- links -------------------------------------------------------------------------------------

LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def site_target(repo_path: str) -> str | None:
    """The site's page or file for a repository path (``packages/semanir/docs/cli.md``), or
    None when the site does not hold it."""
    parts = repo_path.split("/")
    if len(parts) == 4 and parts[0] == "packages" and parts[2] == "docs":
        return f"{parts[1]}/{parts[3]}"
    if len(parts) == 3 and parts[0] == "packages" and parts[2] == "README.md":
        return f"{parts[1]}/getting-started.md"
    if len(parts) == 2 and parts[0] == "packages":  # a package's folder: its docs index
        return f"{parts[1]}/index.md"
    return None


def relative(target: str, page: str) -> str:
    """``target`` (a site path) as a link from the site page ``page``."""
    return os.path.relpath(target, os.path.dirname(page) or ".").replace(os.sep, "/")


def rewrite_links(text: str, source: Path, page: str, files: dict[str, Path]) -> str:
    """``text`` of the committed file ``source`` as the site page ``page``: links to GitHub
    pages the site holds and repository-relative links become links between site pages;
    relative links to images outside the docs folders are copied into the site (``files``:
    site path -> repository file); other relative links point at the file on GitHub."""

    def one(match: re.Match) -> str:
        target = match[2]
        url, fragment = urldefrag(target)
        anchor = f"#{fragment}" if fragment else ""
        for prefix in (BLOB, RAW):
            if url.startswith(prefix) and (site := site_target(url[len(prefix) :])):
                return f"{match[1]}{relative(site, page)}{anchor}{match[3]}"
        if not url or urlparse(url).scheme or url.startswith("/"):
            return match[0]  # an anchor on this page, an outside address
        repo_path = os.path.normpath(source.parent.relative_to(ROOT) / url).replace(os.sep, "/")
        if site := site_target(repo_path):
            return f"{match[1]}{relative(site, page)}{anchor}{match[3]}"
        if repo_path.lower().endswith(IMAGE_SUFFIXES) and (ROOT / repo_path).is_file():
            files[f"files/{repo_path}"] = ROOT / repo_path
            return f"{match[1]}{relative(f'files/{repo_path}', page)}{match[3]}"
        if (ROOT / repo_path).exists():
            return f"{match[1]}{BLOB}{repo_path}{anchor}{match[3]}"
        return match[0]  # a broken link stays broken: the strict build names it

    return LINK.sub(one, text)


# --- the site's source folder and nav ---------------------------------------------------------


def index_titles(package: str) -> dict[str, str]:
    """Page file name -> the title the package's ``docs/index.md`` links it with."""
    index = ROOT / "packages" / package / "docs" / "index.md"
    if not index.is_file():
        return {}
    titles = {}
    for title, target in re.findall(r"\[([^\]]+)\]\(([\w.-]+\.md)\)", index.read_text("utf-8")):
        titles.setdefault(target, " ".join(title.split()))
    return titles


def page_title(path: Path, package: str) -> str:
    """A page's first heading without its ``package:`` prefix."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].removeprefix(f"{package}:").strip().capitalize()
    return path.stem


def package_nav(package: str) -> list:
    """One package's nav: its docs index, getting started (the README), its guides in the order
    its index lists them (the rest after them), the generated references, its gallery."""
    titles = index_titles(package)
    pages = {p.name: p for p in guide_pages(package)}
    ordered = [n for n in titles if n in pages and n != "index.md"]
    ordered += [n for n in pages if n not in ordered and n != "index.md"]
    nav: list = [f"{package}/index.md"] if "index.md" in pages else []
    nav.append({"Getting started": f"{package}/getting-started.md"})
    nav += [{titles.get(n) or page_title(pages[n], package): f"{package}/{n}"} for n in ordered]
    if package in docs_reference.COMMANDS:
        nav.append({"CLI reference": f"{package}/cli-reference.md"})
    nav.append({"API reference": f"{package}/api-reference.md"})
    if (ROOT / "docs" / "gallery" / f"{package}.md").is_file():
        nav.append({"Gallery": f"gallery/{package}.md"})
    return nav


def nav() -> list:
    """The whole site's nav: the home tab, then one tab per package."""
    home = [{title: page} for title, page in HOME_PAGES]
    if (ROOT / "docs" / "gallery" / "index.md").is_file():
        home.append({"Gallery": "gallery/index.md"})
    return [{"Home": home}, *({p: package_nav(p)} for p in package_names())]


def nav_pages(entries: list) -> list[str]:
    """Every page path a nav names, in order."""
    found = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def assemble(folder: Path) -> None:
    """Write the site's source into ``folder`` (which must not exist)."""
    files: dict[str, Path] = {}

    def write(page: str, text: str) -> None:
        path = folder / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    shutil.copytree(ROOT / "docs", folder)
    readme = ROOT / "README.md"
    write(
        "development.md", rewrite_links(readme.read_text("utf-8"), readme, "development.md", files)
    )
    for package in package_names():
        base = ROOT / "packages" / package
        readme = base / "README.md"
        page = f"{package}/getting-started.md"
        write(page, rewrite_links(readme.read_text("utf-8"), readme, page, files))
        for path in sorted((base / "docs").iterdir()):
            page = f"{package}/{path.name}"
            if path.suffix == ".md":
                write(page, rewrite_links(path.read_text("utf-8"), path, page, files))
            elif path.is_file():  # the pages' own images (app.png)
                shutil.copy2(path, folder / page)
        if (cli := docs_reference.cli_reference(package)) is not None:
            write(f"{package}/cli-reference.md", cli)
        write(f"{package}/api-reference.md", docs_reference.api_reference(package))
    for page, source in files.items():
        (folder / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / page)


class _PythonTag:
    """A ``!!python/...`` node of mkdocs.yml (toc's slugify), kept as it is: MkDocs' own loader
    builds the object when it reads the written config."""

    def __init__(self, tag: str, node, loader) -> None:
        self.tag = tag
        self.value = loader.construct_mapping(node, deep=True)


@functools.cache
def _yaml_io() -> tuple[type, type]:
    """(Loader, Dumper) of mkdocs.yml: PyYAML's safe ones, keeping ``!!python/...`` nodes."""

    class Loader(yaml.SafeLoader):
        pass

    class Dumper(yaml.SafeDumper):
        pass

    Loader.add_multi_constructor(
        "tag:yaml.org,2002:python/", lambda loader, suffix, node: _PythonTag(suffix, node, loader)
    )
    Dumper.add_representer(
        _PythonTag,
        lambda dumper, tag: dumper.represent_mapping(
            f"tag:yaml.org,2002:python/{tag.tag}", tag.value
        ),
    )
    return Loader, Dumper


def read_mkdocs_yml() -> dict:
    """The root mkdocs.yml as data (its ``!!python/...`` nodes kept as they are)."""
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_yaml_io()[0])


def site_config() -> dict:
    """The root mkdocs.yml with the assembled source, the output folder and the nav; paths
    made absolute, since the written config lives in build/docs-site/."""
    config = read_mkdocs_yml()
    config.update(docs_dir=str(SOURCE), site_dir=str(OUTPUT), nav=nav())
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            python = plugin["mkdocstrings"]["handlers"]["python"]
            python["paths"] = [str(ROOT / p) for p in python["paths"]]
    return config


# what the build imports: the docs tools, and every package (the CLI reference reads its parsers)
NOX_LINE = "python3 -m pip install 'nox==2026.10.20' 'uv==0.13.9' && python3 -m nox -s docs"


def missing_for_build() -> list[str]:
    """The distributions the build needs that this interpreter cannot import."""
    import importlib.util

    needed = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings",
              "mkdocstrings_handlers.python": "mkdocstrings-python", "yaml": "PyYAML"}  # fmt: skip
    needed |= {docs_reference.IMPORT_NAMES[p]: p for p in package_names()}
    missing = []
    for module, distribution in needed.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            missing.append(distribution)
    return missing


def build(quiet: bool = False) -> float:
    """Assemble the source and run ``mkdocs build --strict``; returns the seconds it took.
    Nothing is left half-written: the source is assembled aside and renamed into place.

    Raises:
        SystemExit: a package or docs tool is not installed (one line naming them and the
            command that installs and builds everything), or mkdocs failed (a warning in strict
            mode), with its output printed.
    """
    missing = missing_for_build()
    if missing:
        raise SystemExit(
            f"docs_site build: needs {', '.join(missing)} installed (the packages and "
            f"tools/docs-requirements.txt); {NOX_LINE} installs them and builds the site"
        )
    start = time.perf_counter()
    SITE.mkdir(parents=True, exist_ok=True)
    partial = SITE / "src.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        assemble(partial)
    finally:
        if sys.exc_info()[0] is not None:
            shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(SOURCE, ignore_errors=True)
    partial.rename(SOURCE)  # mkdocs never reads a half-written source folder
    tmp = CONFIG.with_suffix(".yml.partial")
    text = yaml.dump(site_config(), Dumper=_yaml_io()[1], sort_keys=False)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, CONFIG)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(CONFIG)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        raise SystemExit(f"docs_site build: mkdocs build --strict failed ({seconds:.0f} s)")
    if not quiet:
        print(f"built {OUTPUT.relative_to(ROOT)} in {seconds:.1f} s "
              f"({len(nav_pages(nav()))} pages in the nav)")  # fmt: skip
    return seconds


# --- the browser check -------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What ``check`` saw: pages opened, links followed, problems, screenshots."""

    pages: int
    links: int
    problems: list[str]
    screenshots: list[Path]
    search_hits: list[str]
    seconds: float


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the check prints its own summary
        pass


def _serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def chromium_path() -> str:
    """The Chromium binary: ``$CHROMIUM`` or Debian's ``/usr/bin/chromium``."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        raise SystemExit(
            f"docs_site check: no Chromium at {path} (apt-get install -y chromium, or set CHROMIUM)"
        )
    return path


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the built site as a URL path (``semanir/cli-reference/``)."""
    pages = []
    for path in sorted(site.rglob("index.html")):
        rel = path.parent.relative_to(site).as_posix()
        pages.append("" if rel == "." else f"{rel}/")
    return pages


def _target_exists(site: Path, path: str) -> Path | None:
    """The file a URL path names in the built site (a folder's index.html), or None."""
    file = site / path.lstrip("/")
    if file.is_dir():
        file = file / "index.html"
    return file if file.is_file() else None


def check(site: Path = OUTPUT, screenshots: Path = SCREENSHOTS) -> CheckReport:
    """Open every page of the built ``site`` in Chromium; see the module's docstring."""
    import importlib.util

    if yaml is None or importlib.util.find_spec("playwright") is None:
        raise SystemExit(
            "docs_site check: needs PyYAML and playwright installed (tools/docs-requirements.txt);"
            f" {NOX_LINE} installs them, builds the site and checks it"
        )
    from playwright.sync_api import sync_playwright

    if not (site / "index.html").is_file():
        raise SystemExit(f"docs_site check: {site} holds no built site (run build first)")
    start = time.perf_counter()
    shutil.rmtree(screenshots, ignore_errors=True)
    screenshots.mkdir(parents=True)
    server, base = _serve(site)
    problems: list[str] = []
    shots: list[Path] = []
    ids: dict[str, set[str]] = {}
    links: dict[tuple[str, str], str] = {}  # (target path, fragment) -> the page linking it
    pages = site_pages(site)
    site_name = read_mkdocs_yml()["site_name"]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path())
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            for path in pages:
                errors.clear()
                response = page.goto(base + path, wait_until="load")
                if response is None or response.status != 200:
                    problems.append(f"{path}: HTTP {response.status if response else 'none'}")
                    continue
                title = page.title()  # "<nav title> - <site name>"
                heading = page.locator("article h1").first
                h1 = heading.inner_text().replace("¶", "").strip() if heading.count() else ""
                if not h1 or not title.endswith(f" - {site_name}") or title == f" - {site_name}":
                    problems.append(f"{path}: title {title!r}, heading {h1!r}")
                problems += [f"{path}: JavaScript error: {e}" for e in errors]
                ids[path] = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
                hrefs = page.eval_on_selector_all(
                    "a[href]", "els => els.map(e => e.getAttribute('href'))"
                )
                for href in hrefs:
                    absolute = urljoin(base + path, href)
                    if not absolute.startswith(base):
                        continue  # GitHub, PyPI: outside the site
                    url, fragment = urldefrag(absolute)
                    links.setdefault((url[len(base) :], fragment), path)
                shot = screenshots / f"{path.strip('/').replace('/', '__') or 'index'}.png"
                page.screenshot(path=str(shot))
                shots.append(shot)
            hits = _search(page, base, screenshots / "search.png")
            shots.append(screenshots / "search.png")
            found = [h for h in hits if urldefrag(h)[0].split("?")[0].endswith(SEARCH_PAGE)]
            if not found:
                problems.append(f"search for {SEARCH_TERM!r} did not find {SEARCH_PAGE}: {hits}")
            elif SEARCH_FLAG not in (site / SEARCH_PAGE / "index.html").read_text("utf-8"):
                problems.append(f"{SEARCH_PAGE} does not hold {SEARCH_FLAG}")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    for (target, fragment), source in sorted(links.items()):
        file = _target_exists(site, target)
        if file is None:
            problems.append(f"{source}: broken link to /{target}")
        elif fragment and file.name == "index.html":
            page_path = file.parent.relative_to(site).as_posix()
            page_path = "" if page_path == "." else f"{page_path}/"
            if fragment not in ids.get(page_path, set()):
                problems.append(f"{source}: /{target}#{fragment}: no such anchor")
    return CheckReport(len(pages), len(links), problems, shots, hits,
                       time.perf_counter() - start)  # fmt: skip


def _search(page, base: str, screenshot: Path) -> list[str]:
    """Type ``SEARCH_TERM`` into the site's search box; the result links' hrefs."""
    page.goto(base, wait_until="load")
    box = page.locator("input.md-search__input")
    box.click(force=True)  # opens the search dialog (the index loads in a worker)
    box.fill(SEARCH_TERM)
    results = page.locator(".md-search-result__item a")
    try:
        results.first.wait_for(timeout=20_000)
    except Exception:  # no result appeared: the caller reports the empty list
        page.screenshot(path=str(screenshot))
        return []
    page.screenshot(path=str(screenshot))
    return [urljoin(base, h) for h in results.evaluate_all("els => els.map(e => e.href)")]


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docs_site", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="assemble the source and build the site (strict)")
    checking = commands.add_parser("check", help="open every built page in Chromium")
    checking.add_argument(
        "--screenshots", type=Path, default=SCREENSHOTS,
        help="folder for one screenshot per page (default: %(default)s)",
    )  # fmt: skip
    gallery = commands.add_parser("gallery", help="regenerate docs/gallery from the data")
    gallery.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                         help="the shared data folder (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "build":
        build()
    elif args.command == "check":
        report = check(screenshots=args.screenshots)
        print(f"checked {report.pages} pages and {report.links} internal links in "
              f"{report.seconds:.1f} s; search {SEARCH_TERM!r}: {len(report.search_hits)} "
              f"results; screenshots in {args.screenshots}")  # fmt: skip
        for problem in report.problems:
            print(f"docs_site check: {problem}", file=sys.stderr)
        return 1 if report.problems else 0
    else:
        import docs_gallery

        docs_gallery.main(args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
