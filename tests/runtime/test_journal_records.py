"""The journal's typed records write exactly the JSON lines earlier versions wrote, and read any version's."""

from __future__ import annotations

import json

from dermsort.runtime.journal import Journal
from dermsort.runtime.records import Abort, Claim, Done, Intent, SourceRemoved, parse

#: the keys of an intent line since the gate score was added (a new key is appended here, never renamed)
INTENT_KEYS = {"event", "id", "file", "relpath", "size", "mtime_ns", "ino", "ctime_ns", "sha256", "decision",
               "p_malignant", "threshold", "threshold_overridden", "backend", "artifact", "precision",
               "artifact_accepted", "signature", "model_id", "time", "reason", "mode", "run_id", "host", "dest",
               "top_dx", "top_dx_p", "site_profile", "gate_score"}


def test_each_record_writes_the_json_it_always_wrote_and_reads_back():
    intent = Intent("a", file="/in/a.jpg", dest="review/a.jpg", sha256="0" * 64, decision="review", reason="r")
    assert set(intent.to_json()) == INTENT_KEYS  # flags that are unset are not written
    flagged = Intent("b", file="", dest="review/b.jpg", sha256="1" * 64, decision="review", not_an_image=True,
                     recovered_from_output=True, relocated_from="benign/b.jpg")
    assert set(flagged.to_json()) - INTENT_KEYS == {"not_an_image", "recovered_from_output", "relocated_from"}
    assert Done("a").to_json() == {"event": "done", "id": "a"}
    assert Done("a", recovered=True).to_json() == {"event": "done", "id": "a", "recovered": True}
    assert Abort("a", "why").to_json() == {"event": "abort", "id": "a", "why": "why"}
    assert SourceRemoved("a").to_json() == {"event": "source_removed", "id": "a"}
    assert SourceRemoved("a", observed=True).to_json() == {"event": "source_removed", "id": "a", "observed": True}
    claim = Claim("a", "/in/b.jpg", relpath="b.jpg", size=1, mtime_ns=2, ino=3, ctime_ns=4)
    assert claim.to_json() == {"event": "claim", "id": "a", "file": "/in/b.jpg", "relpath": "b.jpg", "size": 1,
                               "mtime_ns": 2, "ino": 3, "ctime_ns": 4}
    for rec in (intent, flagged, Done("a", True), Abort("a", "x"), SourceRemoved("a", True), claim):
        assert parse(json.loads(json.dumps(rec.to_json()))) == rec


def test_an_old_journal_line_reads_with_missing_fields_empty_and_unknown_ones_kept(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps({"event": "intent", "id": "a", "file": "/in/a.jpg", "dest": "benign/a.jpg",
                                "sha256": "0" * 64, "decision": "benign", "from_the_future": 1}) + "\n"
                    + json.dumps({"event": "done", "id": "a"}) + "\n"
                    + json.dumps({"event": "not_yet_invented", "id": "a"}) + "\n")
    state = Journal(path).read()
    rec = state.intents["a"]
    assert rec.gate_score is None and rec.mode is None and rec.extra == {"from_the_future": 1}
    assert rec.row()["artifact_accepted"] is True  # runs before it was recorded used accepted artifacts only
    assert state.done == {"a"} and state.by_source == {"/in/a.jpg": "a"} and state.bad_lines == 0


def test_record_is_durable_before_it_is_folded(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.open()
    intent = Intent("a", file="/in/a.jpg", dest="review/a.jpg", sha256="0" * 64, decision="review")
    j.record(intent)
    assert j.state.pending() == [intent]
    j.record(Done("a"), Claim("a", "/in/renamed.jpg", present=("file",)))
    j.close()
    again = Journal(j.path).read()
    assert again.done == j.state.done == {"a"} and again.by_source == j.state.by_source
    assert again.intents["a"].file == "/in/renamed.jpg"
