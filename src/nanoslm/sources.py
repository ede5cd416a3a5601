"""The download stage: read stories from the Hugging Face Hub or local files, write them in the hub's .txt layout.

Every reader streams, so memory stays flat however large the source is.
"""

import itertools
import json
import os
import re
import socket
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Generator, Iterable, Optional
from urllib.parse import urlparse

from tqdm import tqdm

from .atomic import atomic_path
from .config import DataConfig
from .errors import UserError, brief
from .gpt2 import EOT_TEXT as SEPARATOR  # the hub's .txt files end every story with a line holding exactly this

SPLITS = ("train", "validation")
FORMATS = (".txt", ".jsonl", ".json", ".parquet")
HUB_TIMEOUT_S = 3.0

Stories = Generator[str, None, None]

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_SPACE = re.compile(r"[ \t\r\n]*")
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_REPLACEMENT = "\ufffd"


def iter_stories(source: str, split: str, holdout_every: int) -> Stories:
    """Stream the stripped, non-empty stories of one split of `source`.

    `source` is a Hugging Face dataset id (owner/name) or a local file or directory. A directory holds one
    train and one validation file; a single file holds both splits, story i going to validation when
    i % holdout_every == holdout_every - 1. The source is checked now; file contents as they are read.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _local_path(source)
    if path is None:
        return _hub_stories(source, split)
    if path.is_dir():
        return _file_stories(_split_file(path, split))
    return _holdout(_file_stories(path), holdout_every, want_validation=split == "validation")


def download(cfg: DataConfig, out_dir) -> dict:
    """Write out_dir/train.txt and out_dir/validation.txt in the hub's layout; return stories and bytes per split."""
    caps = {"train": cfg.max_train_stories, "validation": cfg.max_val_stories}
    # Open both splits before writing either, so a bad source fails before minutes of work.
    splits = {split: iter_stories(cfg.source, split, cfg.holdout_every) for split in SPLITS}
    stats = {}
    for split, stories in splits.items():
        with closing(stories):
            capped = itertools.islice(stories, caps[split])
            stats[split] = _write_txt(capped, Path(out_dir) / f"{split}.txt", split, cfg)
    return stats


def iter_txt_stories(path) -> Stories:
    """Stream the stories of a .txt file in the hub's layout (stories separated by lines holding <|endoftext|>).

    Inner newlines are kept exactly. Invalid UTF-8 becomes U+FFFD and is reported once on stderr.
    """
    separator = SEPARATOR.encode()
    lines: list[str] = []
    replaced = 0
    with open(path, "rb") as f:
        if f.read(len(_BOM)) != _BOM:
            f.seek(0)
        try:
            for raw in f:  # splitting bytes on b"\n" is safe: it never occurs inside a UTF-8 sequence
                if raw.rstrip(b"\r\n") == separator:
                    story = "".join(lines).strip()
                    lines.clear()
                    if story:
                        yield story
                    continue
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    text = raw.decode("utf-8", errors="replace")
                    replaced += text.count(_REPLACEMENT) - raw.count(_REPLACEMENT.encode())
                    lines.append(text)
            story = "".join(lines).strip()  # the file need not end with a separator
            if story:
                yield story
        finally:  # also runs when a capped reader is closed early
            if replaced:
                print(f"warning: {path}: {replaced} invalid UTF-8 byte sequence(s) replaced with U+FFFD",
                      file=sys.stderr)


def _local_path(source: str) -> Optional[Path]:
    """The local file or directory `source` names, or None when it is a Hugging Face dataset id."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if _HUB_ID.fullmatch(source) and not source.startswith(".") and path.suffix.lower() not in FORMATS:
        return None
    raise UserError(f"data.source: path {source!r} not found (looked at {path.absolute()}); give an existing file "
                    f"or directory, or a Hugging Face dataset id such as roneneldan/TinyStories")


def _split_file(directory: Path, split: str) -> Path:
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FORMATS)
    train = [p for p in files if "train" in p.name.lower()]
    valid = [p for p in files if "valid" in p.name.lower()]
    if len(train) != 1 or len(valid) != 1 or train == valid:
        found = ", ".join(p.name for p in files) or "no such files"
        raise UserError(f"data.source: directory {directory} must hold exactly one file named *train* and one named "
                        f"*valid* ({', '.join(FORMATS)}), found: {found}; rename or move files so one of each remains")
    return (train if split == "train" else valid)[0]


def _file_stories(path: Path) -> Stories:
    readers = {".txt": iter_txt_stories, ".jsonl": _jsonl_stories, ".json": _json_stories,
               ".parquet": _parquet_stories}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise UserError(f"data.source: {path} has unsupported extension '{suffix}'; use a .txt file in the hub's "
                        f"layout, a .jsonl/.json file with a \"text\" field, a .parquet file, or a directory")
    if path.stat().st_size == 0:
        raise UserError(f"data.source: {path} is empty; point data.source at a file that holds stories")
    return readers[suffix](path)


def _holdout(stories: Stories, every: int, want_validation: bool) -> Stories:
    with closing(stories):
        for i, story in enumerate(stories):
            if (i % every == every - 1) == want_validation:
                yield story


def _clean(texts: Iterable[str]) -> Stories:
    for text in texts:
        text = text.strip()
        if text:
            yield text


def _record_text(record, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UserError(f"data.source: {where}: record has no string \"text\" field; every record must be an "
                        f"object like {{\"text\": \"Once upon a time...\"}}")
    return record["text"]


def _jsonl_stories(path: Path) -> Stories:
    def texts():
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)  # bytes: json detects UTF-8 (with or without BOM) strictly
                except ValueError as err:  # JSONDecodeError or UnicodeDecodeError
                    reason = err.msg if isinstance(err, json.JSONDecodeError) else "invalid UTF-8"
                    raise UserError(f"data.source: {path}:{lineno}: invalid JSON ({reason}); "
                                    f"fix that line or remove it") from None
                yield _record_text(record, f"{path}:{lineno}")

    return _clean(texts())


def _json_stories(path: Path) -> Stories:
    """A .json file is either JSON lines or a single array of records."""
    with open(path, "rb") as f:
        head = f.read(_CHUNK).lstrip(_BOM + b" \t\r\n")
    return _clean(_json_array_texts(path)) if head.startswith(b"[") else _jsonl_stories(path)


def _json_array_texts(path: Path) -> Generator[str, None, None]:
    """Yield each record's text from a file holding one JSON array, reading it in chunks, not whole."""
    decoder = json.JSONDecoder()
    buf, pos, line, eof = "", 0, 1, False  # line: the line number of buf[0]
    expect = "["  # then "first" (a record or "]"), "next" ("," or "]") and "record" in turn
    with open(path, encoding="utf-8-sig") as f:
        while True:
            if not eof and len(buf) - pos < _CHUNK:
                line += buf.count("\n", 0, pos)
                more = _read_chunk(f, path, line)
                buf, pos, eof = buf[pos:] + more, 0, not more
            pos = _SPACE.match(buf, pos).end()
            if pos == len(buf) and not eof:
                continue
            lineno = line + buf.count("\n", 0, pos)
            char = buf[pos:pos + 1]
            if expect == "[" and char == "[":
                pos, expect = pos + 1, "first"
            elif expect in ("first", "next") and char == "]":
                return
            elif expect == "next" and char == ",":
                pos, expect = pos + 1, "record"
            elif expect in ("first", "record") and char:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if not eof:  # the record may just run past the buffer
                        more = _read_chunk(f, path, line)
                        buf, eof = buf + more, not more
                        continue
                    lineno = line + buf.count("\n", 0, err.pos)
                    raise UserError(f"data.source: {path}:{lineno}: invalid JSON ({err.msg}); "
                                    f"fix the file or convert it to JSON lines") from None
                yield _record_text(record, f"{path}:{lineno}")
                pos, expect = end, "next"
            else:
                found = repr(char) if char else "the end of the file"
                raise UserError(f"data.source: {path}:{lineno}: invalid JSON (unexpected {found} in the array); "
                                f"fix the file or convert it to JSON lines")


def _read_chunk(f, path: Path, line: int) -> str:
    try:
        return f.read(_CHUNK)
    except UnicodeDecodeError:
        raise UserError(f"data.source: {path}: invalid UTF-8 after line {line}; JSON must be UTF-8, "
                        f"re-save the file as UTF-8") from None


def _parquet_stories(path: Path) -> Stories:
    def texts():
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"data.source: {path} is not a readable Parquet file; check the file or re-export it "
                            f"(cause: {brief(err)})") from None
        schema = parquet.schema_arrow
        if "text" not in schema.names:
            raise UserError(f"data.source: {path}: no 'text' column (found: {', '.join(schema.names)}); "
                            f"rename the story column to 'text'")
        kind = schema.field("text").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise UserError(f"data.source: {path}: column 'text' holds {kind}, not strings; store the stories as text")
        for batch in parquet.iter_batches(columns=["text"]):
            yield from (text or "" for text in batch.column(0).to_pylist())

    return _clean(texts())


def _hub_stories(dataset_id: str, split: str) -> Stories:
    # huggingface_hub's own reading of HF_HUB_OFFLINE: these values all mean offline
    if os.environ.get("HF_HUB_OFFLINE", "").upper() not in ("1", "ON", "YES", "TRUE"):
        _require_hub(dataset_id)

    def texts():
        import datasets  # slow to import; only the hub path needs it

        try:
            dataset = datasets.load_dataset(dataset_id, split=split)
        except datasets.exceptions.DatasetNotFoundError:
            raise UserError(f"data.source: dataset {dataset_id!r} not found on the Hugging Face Hub; check the id "
                            f"or give a local path") from None
        if "text" not in dataset.column_names:
            raise UserError(f"data.source: dataset {dataset_id!r} has no 'text' column "
                            f"(found: {', '.join(dataset.column_names)}); use a dataset of stories in 'text'")
        for batch in dataset.iter(batch_size=1024):  # batches: far faster than row by row
            yield from batch["text"]

    return _clean(texts())


def _require_hub(dataset_id: str) -> None:
    """Fail in seconds, not after datasets' long retries, when the hub cannot be reached."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    if not _reachable(url.hostname, url.port or 443):
        raise UserError(f"data.source: cannot reach the Hugging Face Hub ({constants.ENDPOINT}) for {dataset_id!r}; "
                        f"to train on local files run: dvc exp run -S data.source=PATH, where PATH is a .txt "
                        f"(stories separated by <|endoftext|> lines), .jsonl or .parquet file, or a folder holding "
                        f"one *train* and one *valid* file; or set HF_HUB_OFFLINE=1 to use the datasets cache")


def _reachable(host: str, port: int) -> bool:
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
            ok.append(True)
        except OSError:
            pass

    # A thread, because the timeout does not bound the DNS lookup, which can hang far longer.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return bool(ok)


def _write_txt(stories: Iterable[str], path: Path, split: str, cfg: DataConfig) -> dict:
    count = nbytes = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for story in tqdm(stories, desc=f"download {split}", unit=" stories", file=sys.stderr):
            data = story.encode("utf-8")
            f.write(data + b"\n" + SEPARATOR.encode() + b"\n")
            count += 1
            nbytes += len(data)
        if count == 0:
            raise UserError(f"data.source: {cfg.source!r} gave no {split} stories; check that it holds stories for "
                            f"that split (a single file needs at least data.holdout_every={cfg.holdout_every} "
                            f"stories to give validation any)")
    return {"stories": count, "bytes": nbytes}
