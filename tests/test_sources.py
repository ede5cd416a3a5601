import json
import sys
import threading
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoslm import sources
from nanoslm.config import DataConfig
from nanoslm.errors import UserError
from nanoslm.sources import download, iter_stories, iter_txt_stories

STORIES = [
    "Once upon a time there was a cat.\nThe cat liked milk. \nThe end.",
    "Tom had a red ball.",
    "Sue said, “Hello!” and waved.",
    "A dog ran.\n\nIt was fast.",
    "The sun came up.",
]


def write_hub_txt(path, stories, final_separator=True):
    text = "\n<|endoftext|>\n".join(stories) + ("\n<|endoftext|>\n" if final_separator else "\n")
    path.write_text(text, encoding="utf-8")
    return path


def config(source, train=None, val=None, every=20):
    return DataConfig(source=str(source), max_train_stories=train, max_val_stories=val, holdout_every=every)


def stories_of(source, split, every=20):
    return list(iter_stories(str(source), split, every))


@pytest.mark.parametrize("final_separator", [True, False])
def test_txt_keeps_inner_text_and_strips_ends(tmp_path, final_separator):
    path = tmp_path / "s.txt"
    write_hub_txt(path, ["  " + STORIES[0] + "  ", "", "\n", *STORIES[1:]], final_separator)
    assert list(iter_txt_stories(path)) == STORIES


def test_txt_separator_must_be_the_whole_line_and_bom_is_dropped(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"\xef\xbb\xbfOne <|endoftext|> still one\n<|endoftext|>\r\nTwo\n<|endoftext|>\n")
    assert list(iter_txt_stories(path)) == ["One <|endoftext|> still one", "Two"]


def test_txt_invalid_utf8_is_replaced_and_reported_once(tmp_path, capsys):
    path = tmp_path / "s.txt"
    path.write_bytes(b"ab\xffcd \xef\xbf\xbd\n<|endoftext|>\nx\xfe\xfey\n<|endoftext|>\n")
    assert list(iter_txt_stories(path)) == ["ab\ufffdcd \ufffd", "x\ufffd\ufffdy"]
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "3 invalid UTF-8" in err  # the genuine U+FFFD in the file is not counted


def test_directory_uses_its_train_and_valid_files(tmp_path):
    write_hub_txt(tmp_path / "train-sample.txt", STORIES[:3])
    (tmp_path / "Validation.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES[3:]))
    (tmp_path / "SOURCE.md").write_text("train valid notes")
    (tmp_path / ".train-old.txt").write_text("hidden\n")
    assert stories_of(tmp_path, "train") == STORIES[:3]
    assert stories_of(tmp_path, "validation") == STORIES[3:]


@pytest.mark.parametrize("names", [[], ["train.txt"], ["train.txt", "train2.txt", "valid.txt"]])
def test_directory_without_exactly_one_of_each_is_rejected(tmp_path, names):
    for name in names:
        write_hub_txt(tmp_path / name, STORIES)
    with pytest.raises(UserError) as err:
        iter_stories(str(tmp_path), "train", 20)
    message = str(err.value)
    assert "exactly one file named *train*" in message and "\n" not in message
    for name in names:
        assert name in message


def test_single_file_holds_out_every_nth_story(tmp_path):
    path = write_hub_txt(tmp_path / "all.txt", [f"Story {i}." for i in range(10)])
    assert stories_of(path, "validation", every=3) == ["Story 2.", "Story 5.", "Story 8."]
    assert stories_of(path, "train", every=3) == [f"Story {i}." for i in (0, 1, 3, 4, 6, 7, 9)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines(tmp_path, suffix):
    path = tmp_path / f"all{suffix}"
    lines = [json.dumps({"text": s, "id": i}) for i, s in enumerate(STORIES)]
    path.write_text("\n".join(lines[:2] + ["", json.dumps({"text": "   "})] + lines[2:]) + "\n")
    assert stories_of(path, "train", every=100) == STORIES


@pytest.mark.parametrize("chunk", [7, 1 << 20])  # 7: records straddle every read
def test_json_array_streams_in_chunks(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(sources, "_CHUNK", chunk)
    path = tmp_path / "all.json"
    path.write_text(json.dumps([{"text": s} for s in STORIES], indent=2, ensure_ascii=False))
    assert stories_of(path, "train", every=100) == STORIES
    path.write_text("[]")
    with pytest.raises(UserError, match="no train stories"):
        download(config(path, every=100), tmp_path / "out")


@pytest.mark.parametrize("chunk", [7, 1 << 20])
@pytest.mark.parametrize("text, line", [
    ('[\n{"text": "a"},\n{"text": "b"},\n]', 4),  # trailing comma
    ('[\n{"text": "a"}\n{"text": "b"}]', 3),  # missing comma
    ('[\n{"text": "a"},\n{"text": "b\n', 3),  # cut off inside a string
    ('[\n{"text": "a"},\n{"text": "b"}\n', 4),  # no closing bracket
])
def test_json_array_errors_name_the_line(tmp_path, monkeypatch, chunk, text, line):
    monkeypatch.setattr(sources, "_CHUNK", chunk)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match=f"bad.json:{line}: invalid JSON"):
        stories_of(path, "train", every=100)


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n')
    stories = iter_stories(str(path), "train", 100)
    assert next(stories) == "a"
    with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid JSON"):
        list(stories)


@pytest.mark.parametrize("record", ['{"title": "x"}', '{"text": 5}', '"just text"'])
def test_record_without_string_text_names_file_and_line(tmp_path, record):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n' + record + "\n")
    with pytest.raises(UserError, match=r'bad\.jsonl:2: record has no string "text" field'):
        stories_of(path, "train", every=100)


def test_parquet_text_column(tmp_path):
    path = tmp_path / "all.parquet"
    table = pa.table({"text": [*STORIES, None, " "], "n": list(range(len(STORIES) + 2))})
    pq.write_table(table, path, row_group_size=2)
    assert stories_of(path, "train", every=100) == STORIES


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "all.parquet"
    pq.write_table(pa.table({"story": STORIES}), path)
    with pytest.raises(UserError, match="no 'text' column .found: story."):
        stories_of(path, "train")


@pytest.mark.parametrize("name, content, match", [
    ("stories.csv", "text\na\n", "unsupported extension '.csv'"),
    ("empty.txt", "", "is empty"),
])
def test_bad_files_are_rejected(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=match):
        iter_stories(str(tmp_path / name), "train", 20)


@pytest.mark.parametrize("source", ["./missing", "/no/such/dir", "~/no-such-nanoslm-dir", "data/train.txt", "x"])
def test_missing_paths_are_not_taken_for_hub_ids(source):
    with pytest.raises(UserError, match="data.source: path .* not found"):
        iter_stories(source, "train", 20)


def test_hub_dataset(monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["  Story one.\n", "", "Story two."]})

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_reachable", lambda host, port: (host, port) == ("huggingface.co", 443))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert stories_of("roneneldan/TinyStories", "validation") == ["Story one.", "Story two."]
    assert calls == [("roneneldan/TinyStories", "validation")]


def test_hub_offline_mode_skips_the_probe(monkeypatch):
    import datasets

    def probe(host, port):
        raise AssertionError("probed the hub in offline mode")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "_reachable", probe)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_dict({"text": ["Hi."]}))
    assert stories_of("roneneldan/TinyStories", "train") == ["Hi."]


def test_unreachable_hub_fails_fast_with_the_fix(monkeypatch):
    def refuse(address, timeout):
        raise OSError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources.socket, "create_connection", refuse)
    called = []
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: called.append(a))  # the real one retries ~24 s
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(UserError) as err:
        download(config("roneneldan/TinyStories"), "unused")
    assert not called  # failed before handing over to datasets' retry loop
    message = str(err.value)
    assert "cannot reach the Hugging Face Hub" in message and "'roneneldan/TinyStories'" in message
    assert "dvc exp run -S data.source=PATH, where PATH is a .txt" in message and "HF_HUB_OFFLINE=1" in message
    assert "shared" not in message  # no path that exists only on our own machines


def test_a_hanging_lookup_is_cut_off(monkeypatch):
    release = threading.Event()

    def hang(address, timeout):  # a DNS lookup that ignores the socket timeout
        release.wait()
        raise OSError("released")

    monkeypatch.setattr(sources, "HUB_TIMEOUT_S", 0.2)
    monkeypatch.setattr(sources.socket, "create_connection", hang)
    assert not sources._reachable("huggingface.co", 443)
    assert not release.is_set()  # the answer came while the lookup was still hanging
    release.set()


def test_download_writes_hub_layout_with_caps(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_hub_txt(src / "train.txt", STORIES)
    write_hub_txt(src / "valid.txt", STORIES[::-1])
    out = tmp_path / "out"
    stats = download(config(src, train=3, val=None), out)
    assert sorted(p.name for p in out.iterdir()) == ["train.txt", "validation.txt"]
    assert (out / "train.txt").read_text(encoding="utf-8") == "".join(s + "\n<|endoftext|>\n" for s in STORIES[:3])
    assert list(iter_txt_stories(out / "validation.txt")) == STORIES[::-1]
    assert stats == {
        "train": {"stories": 3, "bytes": sum(len(s.encode()) for s in STORIES[:3])},
        "validation": {"stories": 5, "bytes": sum(len(s.encode()) for s in STORIES)},
    }


def test_download_of_an_empty_split_fails_and_writes_nothing(tmp_path):
    path = write_hub_txt(tmp_path / "all.txt", STORIES[:2])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no validation stories.*holdout_every=3"):
        download(config(path, every=3), out)
    assert sorted(p.name for p in out.iterdir()) == ["train.txt"]


def test_download_is_atomic(tmp_path, monkeypatch):
    def broken(source, split, holdout_every):
        yield "A story."
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sources, "iter_stories", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        download(config("unused"), out)
    assert list(out.iterdir()) == []
