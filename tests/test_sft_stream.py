"""Dialogue files for chat SFT: JSON lines are read one record at a time (read whole, a 200 MB
file peaked at 1.4 GB before the first conversation), with the same records and line numbers."""
import json
import tracemalloc

import pytest

from wikigpt.chat.chat_template import Message
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.chat.sft_data import read_dialogues
from wikigpt.cli import UsageError


def test_a_jsonl_file_is_not_held_in_memory_to_give_its_first_conversation(tmp_path):
    path = tmp_path / "big.jsonl"
    row = json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"},
                                   {"role": "assistant", "content": "Paris. " * 20}]}) + "\n"
    path.write_text(row * (4 * 2**20 // len(row)))  # 4 MB
    conversations = read_dialogues(path, SFTConfig(), [])
    tracemalloc.start()
    try:
        first = next(conversations)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first[0] == Message("user", "What is the capital of France?")
    assert peak < path.stat().st_size / 16, f"{peak:,} bytes allocated to read one record"
    assert sum(1 for _ in conversations) == 4 * 2**20 // len(row) - 1


def test_records_and_line_numbers_survive_blank_lines_crlf_and_a_missing_last_newline(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\r\n\n  \n{"prompt": oops\n\xff\xfe\n[1, 2]\n'
                     b'{"prompt": "c", "response": "d"}\n{"prompt": "e"')
    skipped = []
    convs = list(read_dialogues(path, SFTConfig(skip_bad_records=True), skipped))
    assert convs == [[Message("user", "a"), Message("assistant", "b")], [Message("user", "c"), Message("assistant", "d")]]
    assert [s.rsplit(":", 1)[1] for s in skipped] == ["4", "5", "6", "8"]
    with pytest.raises(UsageError, match=r"mixed.jsonl, line 4: not valid JSON \(Expecting value: line 1 column 12"):
        list(read_dialogues(path, SFTConfig(), []))
