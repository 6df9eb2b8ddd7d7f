"""Check the sandbox image from inside: `mcp-codeexec image check` runs this in a throwaway
container (no network, uid 1000, read-only root, tmpfs /tmp and /workspace).

It prints one line per item, `OK <name> <detail>` or `FAIL <name> <reason>`, and exits 1 if any
item failed. Items: the Python version, every SPEC §1 library imported (with its version), every
CLI tool found (with its version), and a real workload for each. Standard library plus the image's
libraries only; all work happens in a temporary directory under $TMPDIR or /tmp.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

HOSTED_PYTHON = (3, 11)

# (distribution name, import name) for every library the hosted container lists (SPEC §1),
# plus the pieces `reportlab[pycairo]` brings in.
LIBRARIES = [
    ("pandas", "pandas"),
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("scikit-learn", "sklearn"),
    ("statsmodels", "statsmodels"),
    ("matplotlib", "matplotlib"),
    ("seaborn", "seaborn"),
    ("pyarrow", "pyarrow"),
    ("openpyxl", "openpyxl"),
    ("xlsxwriter", "xlsxwriter"),
    ("xlrd", "xlrd"),
    ("pillow", "PIL"),
    ("python-pptx", "pptx"),
    ("python-docx", "docx"),
    ("pypdf", "pypdf"),
    ("pdfplumber", "pdfplumber"),
    ("pypdfium2", "pypdfium2"),
    ("pdf2image", "pdf2image"),
    ("pdfkit", "pdfkit"),
    ("tabula-py", "tabula"),
    ("reportlab", "reportlab"),
    ("pycairo", "cairo"),
    ("rlPyCairo", "rlPyCairo"),
    ("img2pdf", "img2pdf"),
    ("sympy", "sympy"),
    ("mpmath", "mpmath"),
    ("tqdm", "tqdm"),
    ("python-dateutil", "dateutil"),
    ("pytz", "pytz"),
    ("joblib", "joblib"),
]

# name on PATH -> argv printing its version (first non-empty output line is reported)
TOOLS = {
    "unzip": ["unzip", "-v"],
    "zip": ["zip", "-v"],
    "unrar": ["unrar"],
    "7z": ["7z", "i"],
    "bc": ["bc", "--version"],
    "rg": ["rg", "--version"],
    "fd": ["fd", "--version"],
    "sqlite3": ["sqlite3", "--version"],
    "bsdtar": ["bsdtar", "--version"],
    "pdftoppm": ["pdftoppm", "-v"],
    "wkhtmltopdf": ["wkhtmltopdf", "--version"],
    "java": ["java", "-version"],
}

CHECKS: list[tuple[str, Callable[[], str]]] = []
WORK = Path(tempfile.mkdtemp(prefix="check-image-", dir=os.environ.get("TMPDIR") or "/tmp"))


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        CHECKS.append((name, fn))
        return fn

    return register


def run(argv: list[str], *, stdin: str | None = None, timeout: float = 120, cwd: Path | None = None) -> str:
    """Run a command; return stdout+stderr; raise on a non-zero exit."""
    proc = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or WORK,
        errors="replace",
        check=False,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {out.strip()[-300:]}")
    return out


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


# --------------------------------------------------------------------------------------------
# Python, libraries, tools


@check("python")
def _python() -> str:
    v = sys.version_info
    expect((v.major, v.minor) == HOSTED_PYTHON, f"Python {v.major}.{v.minor}, hosted is 3.11")
    return f"{sys.version.split()[0]} ({sys.executable}, prefix {sys.prefix})"


def _import_check(dist: str, module: str) -> Callable[[], str]:
    def fn() -> str:
        mod = importlib.import_module(module)
        version = importlib.metadata.version(dist)
        where = os.path.dirname(getattr(mod, "__file__", "") or "")
        return f"{version} {where}"

    return fn


for _dist, _module in LIBRARIES:
    check(f"import:{_dist}")(_import_check(_dist, _module))


def _tool_check(name: str, argv: list[str]) -> Callable[[], str]:
    def fn() -> str:
        path = shutil.which(name)
        expect(path is not None, f"{name} not on PATH")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, errors="replace", cwd=WORK, check=False)
        text = proc.stdout + proc.stderr
        line = first_line(text)
        if name == "7z":  # `7z i` prints its banner first; the version is on the line with "7-Zip"
            line = next((ln.strip() for ln in text.splitlines() if "7-Zip" in ln), line)
        return f"{path}: {line[:100]}"

    return fn


for _name, _argv in TOOLS.items():
    check(f"tool:{_name}")(_tool_check(_name, _argv))


# --------------------------------------------------------------------------------------------
# environment


@check("env:user")
def _user() -> str:
    import pwd

    uid = os.getuid()
    name = pwd.getpwuid(uid).pw_name
    return f"uid={uid}({name}) gid={os.getgid()} HOME={os.environ.get('HOME')}"


@check("env:writable")
def _writable() -> str:
    places = [Path(os.environ.get("HOME", "/workspace")), Path(tempfile.gettempdir())]
    for place in places:
        probe = place / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    return ", ".join(str(p) for p in places)


# --------------------------------------------------------------------------------------------
# workloads: numbers and science


@check("work:numpy")
def _numpy() -> str:
    import numpy as np

    a = np.arange(1, 10, dtype=float).reshape(3, 3) + np.eye(3)
    x = np.linalg.solve(a, np.ones(3))
    expect(np.allclose(a @ x, 1), "solve failed")
    return f"solve 3x3, det={np.linalg.det(a):.3f}"


@check("work:scipy")
def _scipy() -> str:
    from scipy import integrate, optimize, stats

    res = optimize.minimize(lambda v: (v[0] - 3) ** 2 + (v[1] + 1) ** 2, [0.0, 0.0])
    expect(abs(res.x[0] - 3) < 1e-4 and abs(res.x[1] + 1) < 1e-4, f"minimize gave {res.x}")
    area, _ = integrate.quad(lambda t: t**2, 0, 3)
    expect(abs(area - 9) < 1e-9, f"quad gave {area}")
    p = stats.norm.cdf(1.96)
    return f"minimize -> {res.x.round(4).tolist()}, quad=9, norm.cdf(1.96)={p:.4f}"


@check("work:scikit-learn")
def _sklearn() -> str:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0)
    score = LogisticRegression(max_iter=500).fit(xtr, ytr).score(xte, yte)
    expect(score > 0.85, f"accuracy {score}")
    return f"iris logistic regression accuracy {score:.3f}"


@check("work:statsmodels")
def _statsmodels() -> str:
    import numpy as np
    import pandas as pd
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=200)})
    df["y"] = 2.0 + 3.0 * df["x"] + rng.normal(scale=0.1, size=200)
    fit = smf.ols("y ~ x", data=df).fit()
    expect(abs(fit.params["x"] - 3) < 0.05, f"slope {fit.params['x']}")
    return f"OLS y~x slope={fit.params['x']:.3f} r2={fit.rsquared:.3f}"


@check("work:sympy")
def _sympy() -> str:
    import sympy as sp

    x = sp.symbols("x")
    expect(sp.integrate(sp.sin(x) ** 2, (x, 0, sp.pi)) == sp.pi / 2, "integral")
    roots = sp.solve(x**2 - 5 * x + 6, x)
    expect(sorted(roots) == [2, 3], f"roots {roots}")
    return f"integrate sin^2 = pi/2, roots {sorted(roots)}"


@check("work:mpmath")
def _mpmath() -> str:
    import mpmath

    mpmath.mp.dps = 50
    digits = mpmath.nstr(mpmath.pi, 40)
    expect(digits.startswith("3.14159265358979323846264338327950288419"), digits)
    return f"pi = {digits}"


@check("work:pandas+pyarrow")
def _pyarrow() -> str:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    path = WORK / "t.parquet"
    pq.write_table(pa.Table.from_pandas(df), path)
    back = pd.read_parquet(path)
    expect(back.equals(df), f"round trip differs: {back}")
    return f"parquet round trip {path.stat().st_size} bytes, arrow {pa.__version__}"


@check("work:tqdm+dateutil+pytz")
def _small_utils() -> str:
    import datetime as dt

    import pytz
    from dateutil import parser, relativedelta
    from tqdm import tqdm

    sink = io.StringIO()
    total = sum(tqdm(range(1000), file=sink, mininterval=0))
    expect(total == 499500 and "1000/1000" in sink.getvalue(), "tqdm")
    d = parser.parse("2025-01-31 12:00") + relativedelta.relativedelta(months=1)
    expect(d == dt.datetime(2025, 2, 28, 12, 0), str(d))
    paris = pytz.timezone("Europe/Paris").localize(dt.datetime(2025, 7, 1, 12))
    expect(paris.utcoffset() == dt.timedelta(hours=2), str(paris))
    return f"tqdm ok, {d.isoformat()}, {paris.isoformat()}"


def _square(v: int) -> int:
    return v * v


@check("work:joblib")
def _joblib() -> str:
    import joblib

    out = joblib.Parallel(n_jobs=2)(joblib.delayed(_square)(i) for i in range(10))
    expect(out == [i * i for i in range(10)], str(out))
    path = WORK / "obj.joblib"
    joblib.dump({"k": out}, path)
    expect(joblib.load(path) == {"k": out}, "dump/load")
    return "Parallel(n_jobs=2) + dump/load"


# --------------------------------------------------------------------------------------------
# workloads: charts and office files


@check("work:matplotlib")
def _matplotlib() -> str:
    fresh = "matplotlib" not in sys.modules
    start = time.monotonic()
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    imported = time.monotonic() - start
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2, 3], [1, 4, 9, 16], marker="o")
    ax.set_title("check")
    path = WORK / "plot.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    expect(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
    fonts = len(font_manager.fontManager.ttflist)
    return (
        f"PNG {path.stat().st_size} bytes, backend {matplotlib.get_backend()}, {fonts} fonts, "
        f"import {f'{imported:.2f}s' if fresh else 'earlier'}, MPLCONFIGDIR={matplotlib.get_configdir()}"
    )


@check("work:seaborn")
def _seaborn() -> str:
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame({"g": list("aabbcc"), "v": [1, 2, 3, 4, 5, 6]})
    ax = sns.barplot(data=df, x="g", y="v")
    path = WORK / "sns.png"
    ax.figure.savefig(path, dpi=60)
    plt.close(ax.figure)
    expect(path.stat().st_size > 1000, "empty PNG")
    return f"barplot PNG {path.stat().st_size} bytes"


@check("work:pillow")
def _pillow() -> str:
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(img).rectangle([10, 10, 110, 70], outline="black", fill="red")
    img = img.filter(ImageFilter.GaussianBlur(1)).resize((60, 40))
    for ext in ("png", "jpg", "webp"):
        img.save(WORK / f"img.{ext}")
    back = Image.open(WORK / "img.jpg")
    expect(back.size == (60, 40), str(back.size))
    return "draw/blur/resize, PNG+JPEG+WebP saved"


@check("work:xlsx-openpyxl")
def _xlsx_openpyxl() -> str:
    import pandas as pd

    df = pd.DataFrame({"name": ["a", "b", "c"], "value": [1.5, 2.5, 3.5]})
    path = WORK / "openpyxl.xlsx"
    df.to_excel(path, index=False, engine="openpyxl")
    back = pd.read_excel(path, engine="openpyxl")
    expect(back.equals(df), f"read back differs: {back}")
    return f"DataFrame -> xlsx -> DataFrame ({path.stat().st_size} bytes)"


@check("work:xlsx-xlsxwriter")
def _xlsx_xlsxwriter() -> str:
    import openpyxl
    import pandas as pd

    df = pd.DataFrame({"k": [1, 2, 3], "v": [10, 20, 30]})
    path = WORK / "xlsxwriter.xlsx"
    with pd.ExcelWriter(path, engine="xlsxwriter") as writer:
        df.to_excel(writer, index=False, sheet_name="data")
        writer.sheets["data"].write_formula("C2", "=SUM(B2:B4)")
    back = pd.read_excel(path, sheet_name="data", usecols="A:B")
    expect(back.equals(df), f"read back differs: {back}")
    formula = openpyxl.load_workbook(path)["data"]["C2"].value
    expect(formula == "=SUM(B2:B4)", f"formula {formula!r}")
    return "DataFrame -> xlsx (xlsxwriter, with a formula) -> read back"


@check("work:xlrd")
def _xlrd() -> str:
    import xlrd

    path = WORK / "t.xls"
    path.write_bytes(_minimal_xls())
    book = xlrd.open_workbook(str(path), logfile=io.StringIO())
    sheet = book.sheet_by_index(0)
    expect(sheet.cell_value(0, 0) == 42.0, f"cell {sheet.cell_value(0, 0)!r}")
    return f"read a BIFF8 .xls ({sheet.nrows} row), xlrd {xlrd.__version__}"


@check("work:python-docx")
def _docx() -> str:
    import docx

    d = docx.Document()
    d.add_heading("Report", level=1)
    d.add_paragraph("Hello from the sandbox.")
    table = d.add_table(rows=2, cols=2)
    table.cell(1, 1).text = "42"
    path = WORK / "t.docx"
    d.save(path)
    back = docx.Document(path)
    texts = [p.text for p in back.paragraphs]
    expect("Hello from the sandbox." in texts and back.tables[0].cell(1, 1).text == "42", str(texts))
    return f"docx written and read ({path.stat().st_size} bytes)"


@check("work:python-pptx")
def _pptx() -> str:
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    slide = prs.slides.add_slide(prs.slide_layouts[1])
    slide.shapes.title.text = "Quarterly"
    slide.placeholders[1].text = "Revenue up"
    slide.shapes.add_picture(str(WORK / "img.png") if (WORK / "img.png").exists() else _png(), Inches(1), Inches(1))
    path = WORK / "t.pptx"
    prs.save(path)
    back = Presentation(path)
    expect(back.slides[0].shapes.title.text == "Quarterly", "title")
    return f"pptx written and read ({path.stat().st_size} bytes)"


def _png() -> str:
    from PIL import Image

    path = WORK / "img.png"
    Image.new("RGB", (10, 10), "blue").save(path)
    return str(path)


# --------------------------------------------------------------------------------------------
# workloads: PDF


TABLE = [["city", "population"], ["Paris", "2100000"], ["Lyon", "520000"], ["Nice", "340000"]]


def _report_pdf() -> Path:
    path = WORK / "report.pdf"
    if path.exists():
        return path
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    table = Table(TABLE)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 1, colors.black)]))
    doc = SimpleDocTemplate(str(path), pagesize=A4)
    doc.build([Paragraph("Sandbox check report", styles["Title"]), Spacer(1, 12), table])
    return path


@check("work:reportlab")
def _reportlab() -> str:
    path = _report_pdf()
    expect(path.read_bytes()[:5] == b"%PDF-", "not a PDF")
    return f"platypus PDF with a table ({path.stat().st_size} bytes)"


@check("work:reportlab-pycairo")
def _reportlab_cairo() -> str:
    import cairo
    from reportlab.graphics import renderPM
    from reportlab.graphics.shapes import Drawing, Rect, String

    drawing = Drawing(120, 60)
    drawing.add(Rect(5, 5, 110, 50, fillColor=None))
    drawing.add(String(15, 25, "cairo", fontSize=14))
    path = WORK / "rl-cairo.png"
    renderPM.drawToFile(drawing, str(path), fmt="PNG", backend="rlPyCairo")
    expect(path.read_bytes()[:4] == b"\x89PNG", "not a PNG")
    surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, 8, 8)
    cairo.Context(surface).paint()
    return f"renderPM backend rlPyCairo -> PNG, cairo {cairo.cairo_version_string()}"


@check("work:pdfplumber")
def _pdfplumber() -> str:
    import pdfplumber

    with pdfplumber.open(_report_pdf()) as pdf:
        page = pdf.pages[0]
        text = page.extract_text() or ""
        tables = page.extract_tables()
    expect("Sandbox check report" in text, f"text {text[:80]!r}")
    expect(bool(tables) and tables[0][1][0] == "Paris", f"tables {tables}")
    return f"text + table {len(tables[0])}x{len(tables[0][0])} extracted"


@check("work:pypdf")
def _pypdf() -> str:
    from pypdf import PdfReader, PdfWriter

    reader = PdfReader(_report_pdf())
    expect("Paris" in reader.pages[0].extract_text(), "text")
    writer = PdfWriter()
    writer.append(reader)
    writer.append(reader)
    out = WORK / "merged.pdf"
    with open(out, "wb") as fh:
        writer.write(fh)
    expect(len(PdfReader(out).pages) == 2, "merge")
    return "text extracted, 2 PDFs merged"


@check("work:pypdfium2")
def _pypdfium2() -> str:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(_report_pdf()))
    image = pdf[0].render(scale=1).to_pil()
    text = pdf[0].get_textpage().get_text_bounded()
    pdf.close()
    expect("Paris" in text, "text")
    return f"rendered {image.size[0]}x{image.size[1]}, text extracted"


@check("work:pdf2image")
def _pdf2image() -> str:
    from pdf2image import convert_from_path, pdfinfo_from_path

    pages = convert_from_path(str(_report_pdf()), dpi=50)
    info = pdfinfo_from_path(str(_report_pdf()))
    expect(len(pages) == 1 and pages[0].size[0] > 100, f"{pages}")
    return f"poppler rendered {pages[0].size[0]}x{pages[0].size[1]}, pdfinfo pages={info['Pages']}"


@check("work:tabula")
def _tabula() -> str:
    import logging

    logging.getLogger("tabula").setLevel(logging.ERROR)  # "no jpype, using a subprocess" notice
    import tabula

    frames = tabula.read_pdf(str(_report_pdf()), pages=1, lattice=True, silent=True)
    expect(bool(frames), "no table found")
    df = frames[0]
    expect(list(df.columns) == ["city", "population"], f"columns {list(df.columns)}")
    expect(df["city"].tolist() == ["Paris", "Lyon", "Nice"], f"rows {df.values.tolist()}")
    return f"table {df.shape[0]}x{df.shape[1]} read via java"


@check("work:pdfkit")
def _pdfkit() -> str:
    import pdfkit
    from pypdf import PdfReader

    out = WORK / "html.pdf"
    html = "<html><body><h1>Hello PDF</h1><p>wkhtmltopdf works.</p></body></html>"
    pdfkit.from_string(html, str(out), options={"quiet": ""})
    text = " ".join(PdfReader(out).pages[0].extract_text().split())
    expect("Hello PDF" in text, f"text {text[:80]!r}")
    return f"HTML -> PDF via wkhtmltopdf ({out.stat().st_size} bytes)"


@check("work:img2pdf")
def _img2pdf() -> str:
    import img2pdf
    from pypdf import PdfReader

    src = WORK / "img.jpg"
    if not src.exists():
        from PIL import Image

        Image.new("RGB", (60, 40), "green").save(src)
    out = WORK / "img.pdf"
    out.write_bytes(img2pdf.convert(str(src)))
    expect(len(PdfReader(out).pages) == 1, "pages")
    return f"JPEG -> PDF ({out.stat().st_size} bytes)"


# --------------------------------------------------------------------------------------------
# workloads: CLI tools


def _tree() -> Path:
    root = WORK / "tree"
    if not root.exists():
        (root / "sub" / "deeper").mkdir(parents=True)
        (root / "a.txt").write_text("alpha\n")
        (root / "sub" / "b.txt").write_text("bravo needle\n")
        (root / "sub" / "deeper" / "target-file.csv").write_text("x,y\n1,2\n")
    return root


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


@check("work:zip+unzip")
def _zip() -> str:
    root = _tree()
    run(["zip", "-qr", str(WORK / "t.zip"), "."], cwd=root)
    out = WORK / "unzipped"
    run(["unzip", "-q", str(WORK / "t.zip"), "-d", str(out)])
    expect(_same_tree(root, out), "trees differ")
    listing = run(["unzip", "-l", str(WORK / "t.zip")])
    return f"zip -r / unzip round trip ({listing.count('.txt') + listing.count('.csv')} files)"


@check("work:7z")
def _7z() -> str:
    root = _tree()
    run(["7z", "a", "-bd", str(WORK / "t.7z"), "."], cwd=root)
    out = WORK / "un7z"
    run(["7z", "x", "-bd", "-y", f"-o{out}", str(WORK / "t.7z")])
    expect(_same_tree(root, out), "trees differ")
    return "7z a / 7z x round trip"


def _rar4_stored(name: str, data: bytes) -> bytes:
    """A RAR 4.x archive holding one stored (uncompressed) file: no RAR compressor needed."""

    def block(htype: int, flags: int, body: bytes) -> bytes:
        rest = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest

    fname = name.encode()
    file_body = struct.pack(
        "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A210000, 20, 0x30, len(fname), 0o100644
    )
    return (
        b"Rar!\x1a\x07\x00"
        + block(0x73, 0, struct.pack("<HI", 0, 0))
        + block(0x74, 0x8000, file_body + fname)
        + data
        + block(0x7B, 0x4000, b"")
    )


def _vint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rar5_stored(name: str, data: bytes) -> bytes:
    """A RAR 5 archive holding one stored file."""

    def block(fields: bytes) -> bytes:
        head = _vint(len(fields)) + fields
        return struct.pack("<I", zlib.crc32(head)) + head

    fname = name.encode()
    # type file, has a data area, data size; CRC present, unpacked size, attributes; CRC32;
    # compression 0 (stored), host OS Unix, name
    file_fields = b"".join(
        [_vint(2), _vint(0x0002), _vint(len(data)), _vint(0x0004), _vint(len(data)), _vint(0o100644)]
        + [struct.pack("<I", zlib.crc32(data)), _vint(0), _vint(1), _vint(len(fname)), fname]
    )
    return (
        b"Rar!\x1a\x07\x01\x00"
        + block(_vint(1) + _vint(0) + _vint(0))
        + block(file_fields)
        + data
        + block(_vint(5) + _vint(0) + _vint(0))
    )


def _rar_check(fmt: str, maker: Callable[[str, bytes], bytes]) -> Callable[[], str]:
    def fn() -> str:
        payload = f"hello from a {fmt} archive\n".encode()
        archive = WORK / f"t-{fmt}.rar"
        archive.write_bytes(maker(f"{fmt}.txt", payload))
        out = WORK / f"unrar-{fmt}"
        out.mkdir()
        banner = first_line(run(["unrar", "x", "-y", str(archive), str(out) + "/"]))
        expect((out / f"{fmt}.txt").read_bytes() == payload, "extracted bytes differ")
        bsd = WORK / f"bsdtar-{fmt}"
        bsd.mkdir()
        run(["bsdtar", "-xf", str(archive), "-C", str(bsd)])
        expect((bsd / f"{fmt}.txt").read_bytes() == payload, "bsdtar bytes differ")
        return f"`unrar x` and `bsdtar -xf` extracted a {fmt} archive ({banner[:40]})"

    return fn


check("work:unrar-rar4")(_rar_check("rar4", _rar4_stored))
check("work:unrar-rar5")(_rar_check("rar5", _rar5_stored))


@check("work:sqlite3")
def _sqlite() -> str:
    import sqlite3

    db = WORK / "t.db"
    run(["sqlite3", str(db), "create table t(k text, v int); insert into t values ('a',1),('b',2),('c',3);"])
    out = run(["sqlite3", str(db), "select sum(v) from t where k <> 'a';"]).strip()
    expect(out == "5", f"got {out!r}")
    with sqlite3.connect(db) as con:
        n = con.execute("select count(*) from t").fetchone()[0]
    expect(n == 3, f"count {n}")
    return f"CLI query -> {out}; python sqlite3 {sqlite3.sqlite_version}"


@check("work:rg")
def _rg() -> str:
    root = _tree()
    out = run(["rg", "-l", "needle", str(root)]).strip()
    expect(out.endswith("sub/b.txt"), f"got {out!r}")
    return f"found {Path(out).relative_to(root)}"


@check("work:fd")
def _fd() -> str:
    root = _tree()
    out = run(["fd", "target-file", str(root)]).strip()
    expect(out.endswith("deeper/target-file.csv"), f"got {out!r}")
    return f"found {Path(out).relative_to(root)}"


@check("work:bc")
def _bc() -> str:
    out = run(["bc", "-l"], stdin="scale=10; 4*a(1)\n2^64\n").split()
    expect(out[0] == "3.1415926532" and out[1] == "18446744073709551616", f"got {out}")
    return f"4*a(1) = {out[0]}, 2^64 = {out[1]}"


@check("work:fonts")
def _fonts() -> str:
    out = run(["fc-list", ":", "family"])
    families = sorted({line.split(",")[0] for line in out.splitlines() if line})
    expect(bool(families), "no fonts")
    return f"{len(families)} families: {', '.join(families[:6])}"


# --------------------------------------------------------------------------------------------
# a minimal BIFF8 .xls (no writer for the legacy format ships, so it is assembled here)


def _minimal_xls() -> bytes:
    def rec(rtype: int, data: bytes) -> bytes:
        return struct.pack("<HH", rtype, len(data)) + data

    def bof(dt: int) -> bytes:
        return rec(0x0809, struct.pack("<HHHHII", 0x0600, dt, 0x0DBB, 0x07CC, 0, 0x0206))

    def font() -> bytes:
        name = "Arial".encode("latin-1")
        return rec(0x0031, struct.pack("<HHHHHBBBB", 200, 0, 0x7FFF, 400, 0, 0, 0, 0, 0) + bytes([len(name), 0]) + name)

    def xf(style: bool) -> bytes:
        type_prot = 0xFFF5 if style else 0x0001
        return rec(0x00E0, struct.pack("<HHHBBBBIIH", 0, 0, type_prot, 0x20, 0, 0, 0, 0, 0, 0x20C0))

    sheet_name = b"Sheet1"
    globals_without_sheet = (
        bof(0x0005)
        + rec(0x0042, struct.pack("<H", 1200))  # CODEPAGE
        + b"".join(font() for _ in range(5))
        + b"".join(xf(True) for _ in range(15))
        + xf(False)
    )
    boundsheet_len = 4 + 8 + len(sheet_name)
    eof = rec(0x000A, b"")
    sheet_offset = len(globals_without_sheet) + boundsheet_len + len(eof)
    globals_ = (
        globals_without_sheet
        + rec(0x0085, struct.pack("<IBBBB", sheet_offset, 0, 0, len(sheet_name), 0) + sheet_name)
        + eof
    )
    sheet = (
        bof(0x0010)
        + rec(0x0200, struct.pack("<IIHHH", 0, 1, 0, 1, 0))  # DIMENSIONS
        + rec(0x0203, struct.pack("<HHHd", 0, 0, 15, 42.0))  # NUMBER at A1
        + eof
    )
    return _ole_container(globals_ + sheet)


def _ole_container(stream: bytes) -> bytes:
    """Wrap one stream named 'Workbook' in a minimal OLE2 compound file (512-byte sectors)."""
    sector = 512
    stream = stream + b"\0" * max(0, 4096 - len(stream))  # >= 4096: regular (non-mini) stream
    stream += b"\0" * (-len(stream) % sector)
    n_stream = len(stream) // sector
    # sector 0: FAT, sector 1: directory, sectors 2..: the stream
    fat = [0xFFFFFFFD, 0xFFFFFFFE] + [2 + i + 1 for i in range(n_stream - 1)] + [0xFFFFFFFE]
    fat += [0xFFFFFFFF] * (sector // 4 - len(fat))
    header = bytearray(sector)
    header[0:8] = bytes.fromhex("D0CF11E0A1B11AE1")
    struct.pack_into("<HHHHH", header, 24, 0x003E, 0x0003, 0xFFFE, 9, 6)
    struct.pack_into("<IIIIIIII", header, 40, 0, 1, 1, 0, 0x1000, 0xFFFFFFFE, 0, 0xFFFFFFFE)
    struct.pack_into("<I", header, 72, 0)  # no DIFAT sectors
    struct.pack_into("<I", header, 76, 0)  # first FAT sector is sector 0
    for i in range(1, 109):
        struct.pack_into("<I", header, 76 + 4 * i, 0xFFFFFFFF)

    def entry(name: str, etype: int, child: int, start: int, size: int) -> bytes:
        raw = name.encode("utf-16-le") + b"\0\0"
        e = bytearray(128)
        e[0 : len(raw)] = raw
        struct.pack_into("<HBB", e, 64, len(raw), etype, 1)
        struct.pack_into("<III", e, 68, 0xFFFFFFFF, 0xFFFFFFFF, child)
        struct.pack_into("<II", e, 116, start, size)
        return bytes(e)

    directory = (
        entry("Root Entry", 5, 1, 0xFFFFFFFE, 0)
        + entry("Workbook", 2, 0xFFFFFFFF, 2, len(stream))
        + entry("", 0, 0xFFFFFFFF, 0, 0) * 2
    )
    return bytes(header) + struct.pack(f"<{sector // 4}I", *fat) + directory + stream


# --------------------------------------------------------------------------------------------


def main() -> int:
    failed = 0
    started = time.monotonic()
    for name, fn in CHECKS:
        t0 = time.monotonic()
        try:
            detail = fn()
        except Exception as exc:  # noqa: BLE001 - the harness reports every failure and goes on
            failed += 1
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " | ")
            print(f"FAIL {name} {reason[:400]}", flush=True)
            if os.environ.get("CHECK_IMAGE_DEBUG"):
                traceback.print_exc()
            continue
        took = time.monotonic() - t0
        suffix = f" [{took:.1f}s]" if took >= 1 else ""
        print(f"OK {name} {detail}{suffix}", flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    total = len(CHECKS)
    print(f"{total - failed} passed, {failed} failed ({time.monotonic() - started:.1f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
