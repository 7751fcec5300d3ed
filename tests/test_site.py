"""The documentation site and a batch's HTML index, as a browser shows them.

The site is built with ``mkdocs build --strict`` (or taken from ``$VOLBIN_SITE_DIR``), served
with a batch index (``volbin batch --preview``) on 127.0.0.1, and every page is opened in
headless Chromium.  A script added to each HTML response as it is served waits for the page
and its pictures (lazy ones included), then writes into the DOM what it saw: every <img>
with its ``naturalWidth``, every resource the page fetched, and script errors; Chromium's
``--dump-dom`` prints it.  Nothing may come from another host (Chromium is also told that no
host name resolves).  Screenshots of a few pages are kept in ``.ci/artifacts/``.

The built HTML is also read without a browser: no page, stylesheet or script references a
remote asset (links in the text may point anywhere).
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".ci" / "artifacts"
#: Pages kept as screenshots (site pages by file name, and the batch index).
SCREENSHOTS = ("index.html", "methods.html", "cli.html", "report/index.html")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--hide-scrollbars",
)
CHECK_ID = "volbin-site-check"
#: Added at the start of <head> of every HTML page served.
CHECK_SCRIPT = """
<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); });
  function settle(img) {
    if (img.complete) { return Promise.resolve(); }
    return new Promise(function (done) {
      img.addEventListener("load", done); img.addEventListener("error", done);
      setTimeout(done, 4000);
    });
  }
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    imgs.forEach(function (img) { if (img.loading === "lazy") { img.loading = "eager"; } });
    Promise.all(imgs.map(settle)).then(function () {
      var out = {
        url: location.href,
        title: document.title,
        images: imgs.map(function (i) {
          return {src: i.currentSrc || i.src, naturalWidth: i.naturalWidth, complete: i.complete};
        }),
        resources: performance.getEntriesByType("resource").map(function (r) { return r.name; }),
        errors: errors
      };
      var pre = document.createElement("pre");
      pre.id = "__CHECK_ID__";
      pre.hidden = true;
      pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
    });
  });
})();
</script>
""".replace("__CHECK_ID__", CHECK_ID)


# --- remote assets in static files ----------------------------------------------------------------
#: Elements and the attributes a browser fetches.
FETCHED = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "input": ("src",),
    "image": ("href", "xlink:href"),
    "use": ("href", "xlink:href"),
}
#: <link rel=...> values that a browser fetches.
FETCHED_LINKS = {
    "stylesheet",
    "icon",
    "shortcut",
    "apple-touch-icon",
    "preload",
    "prefetch",
    "preconnect",
    "dns-prefetch",
    "modulepreload",
    "manifest",
    "mask-icon",
}
REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
CSS_REMOTE = re.compile(r"""(url\(\s*['"]?\s*(https?:)?//|@import\s+(url\()?\s*['"]?\s*(https?:)?//)""", re.I)


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.remote: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v or "" for k, v in attrs}
        names = FETCHED.get(tag, ())
        if tag == "link" and set(a.get("rel", "").lower().split()) & FETCHED_LINKS:
            names = ("href",)
        for name in names:
            for url in re.split(r",\s*", a.get(name, "")) if name.endswith("srcset") else [a.get(name, "")]:
                if REMOTE.match(url):
                    self.remote.append(f"<{tag} {name}={url.split()[0]}>")
        if CSS_REMOTE.search(a.get("style", "")):
            self.remote.append(f"<{tag} style=...url(remote)>")
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._style and CSS_REMOTE.search(data):
            self.remote.append("<style> url(remote) or @import")


def remote_assets(text: str) -> list[str]:
    """What an HTML page fetches from another host (links to follow are not fetched)."""
    parser = _Assets()
    parser.feed(text)
    return parser.remote


def remote_assets_in(site: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            bad = remote_assets(path.read_text(encoding="utf-8"))
        elif path.suffix == ".css":
            bad = [m.group(0) for m in CSS_REMOTE.finditer(path.read_text(encoding="utf-8"))]
        else:
            continue
        if bad:
            found[str(path.relative_to(site))] = bad
    return found


def test_remote_asset_check_tells_assets_from_links() -> None:
    page = """<html><head><link rel="stylesheet" href="https://cdn.example/x.css">
    <link rel="canonical" href="https://example.org/page"><script src="assets/a.js"></script>
    <style>body { background: url('//cdn.example/bg.png') }</style></head>
    <body><a href="https://distributed.dask.org">dask</a><img src="img/a.png">
    <img srcset="img/a.png 1x, https://cdn.example/b.png 2x"><svg xmlns="http://www.w3.org/2000/svg">
    <use href="#icon"></use></svg><script src="http://cdn.example/y.js"></script></body></html>"""
    assert remote_assets(page) == [
        "<link href=https://cdn.example/x.css>",
        "<style> url(remote) or @import",
        "<img srcset=https://cdn.example/b.png>",
        "<script src=http://cdn.example/y.js>",
    ]
    assert remote_assets('<a href="https://x.org">x</a><img src="a.png">') == []
    assert CSS_REMOTE.search("@import url(https://fonts.example/css)")
    assert not CSS_REMOTE.search(
        "background: url(data:image/svg+xml;charset=utf-8,<svg xmlns='http://www.w3.org/2000/svg'/>)"
    )


# --- building, serving, browsing ------------------------------------------------------------------
def build_site(dest: Path) -> Path:
    """The site: ``$VOLBIN_SITE_DIR`` if it holds one, else ``mkdocs build --strict`` into `dest`."""
    given = os.environ.get("VOLBIN_SITE_DIR")
    if given and (Path(given) / "index.html").exists():
        return Path(given)
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(dest)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dest


def make_report(folder: Path) -> Path:
    """A batch's HTML index, as ``volbin batch ... --preview`` writes it, over two phantoms and a
    corrupt input: masks, their previews, and one failed row."""
    import nibabel as nib

    import volbin
    from volbin.cli import main

    for i in (1, 2, 3):
        src = folder / "data" / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz"
        src.parent.mkdir(parents=True)
        nib.save(volbin.phantom((32, 36, 30), seed=i).to_nifti(), src)
        if i == 3:
            src.write_bytes(src.read_bytes()[:300])  # truncated gzip
    pattern = str(folder / "data" / "sub-*" / "anat" / "*_T1w.nii.gz")
    argv = [
        "batch",
        pattern,
        "--out-dir",
        str(folder),
        "--preview",
        "--scheduler",
        "threads",
        "--no-progress",
    ]
    assert main(argv) == 1  # the corrupt input failed
    index = folder / "index.html"
    assert sorted(p.name for p in folder.glob("*.png")) == ["sub-01_T1w_mask.png", "sub-02_T1w_mask.png"]
    return index


class _Handler(SimpleHTTPRequestHandler):
    """Files of one folder; HTML pages get `CHECK_SCRIPT`; every request is recorded."""

    requests: list[tuple[str, int]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def send_head(self):  # type: ignore[override]
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes()
        head = re.search(
            rb"<head(\s[^>]*)?>", body, flags=re.IGNORECASE
        )  # first, to see the errors of every other script
        at = head.end() if head else 0
        body = body[:at] + CHECK_SCRIPT.encode() + body[at:]
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    requests: list[tuple[str, int]] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium (Debian: apt-get install chromium); the browser check did not run")


def run_chromium(args: list[str], profiles: Path) -> subprocess.CompletedProcess[str]:
    """Chromium with `args`, in a fresh profile under `profiles`."""
    profiles.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(dir=profiles))
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def browse(url: str, profile: Path) -> dict:
    """What `CHECK_SCRIPT` saw on the page at `url`."""
    for _ in range(2):  # a second try for a browser that did not start
        proc = run_chromium(["--virtual-time-budget=15000", "--dump-dom", url], profile)
        m = re.search(rf'<pre id="{CHECK_ID}"[^>]*>(.*?)</pre>', proc.stdout, flags=re.S)
        if m:
            break
    assert m, f"{url}: the page did not finish loading (exit {proc.returncode})\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(url: str, dest: Path, profile: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = run_chromium(
        ["--window-size=1280,1000", "--virtual-time-budget=15000", f"--screenshot={dest}", url], profile
    )
    assert dest.is_file(), f"{url}: no screenshot (exit {proc.returncode})\n{proc.stderr[-2000:]}"
    from PIL import Image

    with Image.open(dest) as img:
        lo, hi = img.convert("L").getextrema()
    assert hi - lo > 50, f"{url}: the screenshot is blank"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("site") / "built")


@pytest.mark.slow
def test_built_site_fetches_nothing_remote(site: Path) -> None:
    remote = remote_assets_in(site)
    assert not remote, f"remote assets in the built site: {remote}"
    assert (site / "search" / "search_index.json").is_file()  # search works offline


@pytest.mark.slow
def test_site_and_report_in_a_browser(site: Path, tmp_path: Path) -> None:
    chromium()
    root = tmp_path / "served"
    shutil.copytree(site, root)
    make_report(root / "report")
    pages = sorted(str(p.relative_to(root)) for p in root.rglob("*.html"))
    assert "index.html" in pages and "report/index.html" in pages and "api.html" in pages
    profile = tmp_path / "profile"
    with serve(root) as (base, requests):
        seen = {}
        for page in pages:
            seen[page] = result = browse(f"{base}/{page}", profile)
            assert not result["errors"], f"{page}: script errors {result['errors']}"
            for img in result["images"]:
                assert img["naturalWidth"] > 0, f"{page}: picture not shown: {img['src']}"
            for url in result["resources"]:
                assert urlsplit(url).netloc == urlsplit(base).netloc, f"{page}: fetched {url} from elsewhere"
        # The check sees a picture that does not load, and a script that fails.
        (root / "broken").mkdir()
        (root / "broken" / "index.html").write_text(
            '<html><body><img src="missing.png"><script>undefined_function();</script></body></html>'
        )
        broken = browse(f"{base}/broken/index.html", profile)
        assert [i["naturalWidth"] for i in broken["images"]] == [0] and broken["errors"]
        requests.remove(("/broken/missing.png", 404))
        for page in SCREENSHOTS:
            name = page.replace("/", "-").removesuffix(".html") + ".png"
            screenshot(f"{base}/{page}", ARTIFACTS / name, profile)
    failed = [(path, code) for path, code in requests if code >= 400 and not path.endswith("favicon.ico")]
    assert not failed, f"requests that failed: {failed}"
    # The pages with pictures show them all: the method guide's and the batch index's.
    srcs = {
        unquote(urlsplit(i["src"]).path)
        for p in ("methods.html", "report/index.html")
        for i in seen[p]["images"]
    }
    assert {"/img/thresholds.png", "/img/all-thresholds.png", "/report/sub-01_T1w_mask.png"} <= srcs
    report = seen["report/index.html"]["images"]
    assert len(report) == 2 and all(img["naturalWidth"] > 0 for img in report), report
