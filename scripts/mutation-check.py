#!/usr/bin/env python3
"""Re-run the reliability mutation checklist (docs/RELIABILITY.md): plant each deliberate bug in the
source, run the test that must catch it, restore the source. Every line must say "caught".

    python3 scripts/mutation-check.py            # all mutations (~4-6 min on 2 cores)
    python3 scripts/mutation-check.py overwrite  # the ones whose name contains "overwrite"

The source files are restored even if the run is interrupted (try/finally); run it on a clean tree.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MORE = "\x00MORE\x00"

#: name, file, original text, mutated text (several pairs joined by MORE), pytest selection that must FAIL
MUTATIONS = [
    ("overwrite: unlink an existing destination before link", "runtime/placement.py",
     "        staged = source.parent == self.tmp_dir\n        try:\n            link(source, dest)",
     "        staged = source.parent == self.tmp_dir\n        try:\n            if os.path.lexists(dest):\n"
     "                os.unlink(dest)\n            link(source, dest)",
     "tests/runtime/test_never_overwrite.py::test_a_taken_destination_is_never_replaced_even_when_the_name_chooser_is_wrong"),
    ("boundary: p <= threshold is benign", "runtime/decision.py",
     "    if p < threshold:\n", "    if p <= threshold:\n",
     "tests/runtime/test_integrity.py::test_decision_rule_is_strictly_below_the_threshold"),
    ("recovery: trust that a placed file exists, without its sha256", "runtime/recovery.py",
     "        return sha256_file(out / rec.dest) == rec.sha256", "        return True",
     "tests/runtime/test_never_overwrite.py::test_recovery_checks_the_sha256_of_a_placed_file_not_only_that_it_exists"),
    ("parity gate: count only flips towards benign", "export/parity.py",
     "    flips = int((review != ref_review).sum())", "    flips = int((ref_review & ~review).sum())",
     "tests/export/test_parity_gate.py -k 'churn_in_both_directions or counted_by_direction'"),
    ("writers: ignore a process that still has the file open", "runtime/fileops/linux.py",
     "            if exc.errno in (errno.EAGAIN, errno.EBUSY):\n                self.method = \"lease\"\n                return True",
     "            if exc.errno in (errno.EAGAIN, errno.EBUSY):\n                self.method = \"lease\"\n                return False",
     "tests/runtime/test_concurrent_writers.py -k writer_paused_longer_than_settle"),
    ("replacement: remove the source without comparing what it holds now", "runtime/placement.py",
     "        if not self._is_classified(d, before, held, linked, dest):", "        if False:",
     "tests/runtime/test_concurrent_writers.py -k 'same_size_same_mtime and cross-fs and renamed-over'"),
    ("replacement: link whatever the path holds now, unchecked", "runtime/placement.py",
     '            link_open_file(d.fd, dest)' + MORE
     + "            if tmp is None and not self._placed_is_classified(d, dest):",
     "            link(d.cand.path, dest)" + MORE + "            if False:",
     "tests/runtime/test_concurrent_writers.py -k 'same_size_same_mtime and same-fs and renamed-over'"),
    ("journal: re-sort what a damaged journal forgot", "runtime/sorter.py",
     "            if used_before:\n                self._reconcile(existed)", "            pass",
     "tests/runtime/test_concurrent_writers.py -k 'damaged_journal and deleted and copy'"),
    ("integrity: no check of the manifest's integrity record", "runtime/bundle.py",
     "    if recorded != decision_digest(data):", "    if False:",
     "tests/runtime/test_integrity.py::test_edited_threshold_in_the_manifest_is_refused"),
    ("integrity: per-artifact threshold not cross-checked with the model file", "runtime/backends/base.py",
     "            self._check_embedded_artifact()\n", "",
     "tests/runtime/test_signing.py -k resealed_per_artifact_threshold"),
    ("integrity: export does not embed each artifact's threshold", "export/api.py",
     "    seal.embed_artifact_records(work, kept)", "    pass",
     "tests/runtime/test_signing.py::test_export_writes_each_artifacts_final_threshold_into_its_own_file"),
    ("signature: signed file list not compared with the bundle", "runtime/signing.py",
     "    if actual != files:", "    if False:",
     "tests/runtime/test_signing.py -k 'different_bundle and same-model'"),
    ("signature: --require-signed not enforced", "runtime/signing.py",
     "    if required and not status.trusted:", "    if False:",
     "tests/runtime/test_signing.py -k 'refused_when_signatures_are_required and flag'"),
    ("signature: an untrusted key counts as trusted", "runtime/signing.py",
     'state="signed" if source else "untrusted"', 'state="signed"',
     "tests/runtime/test_signing.py -k untrusted"),
    ("rejected artifact runs when named", "runtime/engine.py",
     "        if art.rejected and not allow_rejected:", "        if False:",
     "tests/runtime/test_integrity.py -k 'rejected and artifact-path'"),
    ("crash stats: losses not counted", "tests/fault_harness.py",
     "            lost.append(rel)\n", "            pass\n",
     "tests/runtime/test_crash_checker_counts_losses.py"),
    ("probe: slowest first", "runtime/probe.py",
     'rows.sort(key=lambda r: (not r["measured"], r["median_call_ms"] if r["measured"] else r["screen_ms"]))',
     'rows.sort(key=lambda r: (r["measured"], -(r["median_call_ms"] if r["measured"] else r["screen_ms"])))',
     "tests/runtime/test_auto_picks_fastest.py::test_probe_ranks_the_faster_artifact_first_and_records_how"),
    ("probe: a profile never goes stale", "runtime/probe.py",
     '    valid_for = entry.get("valid_for")\n', '    return ""\n    valid_for = entry.get("valid_for")\n',
     "tests/runtime/test_auto_picks_fastest.py -k stale"),
    ("auto: availability by importing every backend", "runtime/engine.py",
     "usable = [(b, a) for b, a in pairs if backend_installed(b)[0]]",
     "usable = [(b, a) for b, a in pairs if backend_status(b)[0]]",
     "tests/runtime/test_auto_picks_fastest.py -k imports_only"),
    ("offline: OpenVINO/NNCF telemetry left on", "dermsort/offline.py",
     "        sys.modules[name] = None  # type: ignore[assignment]", "        pass",
     "tests/runtime/test_offline.py -k info"),
    ("offline: ONNX Runtime telemetry left on", "dermsort/offline.py",
     "        os.environ[key] = value", "        pass",
     "tests/runtime/test_offline.py -k 'sort and auto'"),
    ("recovery: a captured source is always unlinked (a replacement at the capture name too)", "runtime/placement.py",
     "    if same:\n        os.unlink(held)", "    if True:\n        os.unlink(held)",
     "tests/runtime/test_loss_paths.py -k replacement_at_the_capture_name"),
    ("put back: a plain rename over a new file at the original name", "runtime/placement.py",
     "            rename_no_replace(held, target)\n            return target",
     "            os.rename(held, target)\n            return target",
     "tests/runtime/test_loss_paths.py -k new-file-at-the-name"),
    ("finish move: the source goes although its destination is missing or differs", "runtime/sorter.py",
     "            if not same:\n                summary.keep_source", "            if False:\n                summary.keep_source",
     "tests/runtime/test_loss_paths.py -k cross_fs_copy_was_damaged"),
    ("journal: state folded before the records are durable (a failed write still counts)", "runtime/journal.py",
     "        self._write([e.to_json() for e in events], sync=sync)\n        for event in events:\n"
     "            _fold(self.state, event)",
     "        for event in events:\n            _fold(self.state, event)\n"
     "        self._write([e.to_json() for e in events], sync=sync)",
     "tests/runtime/test_crash_and_hostile_env.py::test_journal_write_failure_is_rolled_back"),
    ("durability: no fsync of benign/ and review/ before the done records", "runtime/placement.py",
     "            fsync_dir(self.out / folder)\n        fault_point(\"dir_fsync\")",
     "            pass\n        fault_point(\"dir_fsync\")",
     "tests/runtime/test_loss_paths.py -k strace"),
    ("not-dermoscopy gate: its score ignored by the decision", "runtime/decision.py",
     "        if gate_score >= gate.threshold:\n", "        if gate_score > 1.0:\n",
     "tests/runtime/test_not_dermoscopy_gate.py -k 'every_artifact and onnx-fp32'"),
    ("not-dermoscopy gate: the stage features dropped from its vector", "train/gate.py",
     "        return torch.cat([*pooled, captured[0].flatten(1)], dim=1), logits",
     "        return captured[0].flatten(1), logits",
     "tests/train/test_gate_features.py"),
]


def main(argv: list[str]) -> int:
    wanted = [m for m in MUTATIONS if not argv or any(a in m[0] for a in argv)]
    missed = 0
    for name, rel, old, new, selection in wanted:
        path = REPO / rel
        original = path.read_text()
        pairs = list(zip(old.split(MORE), new.split(MORE)))
        if any(o not in original for o, _ in pairs):
            print(f"SKIPPED (source changed, update the checklist): {name}")
            missed += 1
            continue
        mutated = original
        for o, n in pairs:
            mutated = mutated.replace(o, n, 1)
        start = time.monotonic()
        try:
            path.write_text(mutated)
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                  *selection.split(" ", 1)[:1], *(["-k", selection.split("-k ", 1)[1].strip("'")]
                                                                  if " -k " in selection else [])],
                                 cwd=REPO, capture_output=True, text=True)
        finally:
            path.write_text(original)
        ran = "no tests ran" not in res.stdout and "error" not in res.stdout.splitlines()[-1:][0].lower() \
            if res.stdout.strip() else False
        caught = res.returncode == 1 and ran
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {name}  ({selection}; {time.monotonic() - start:.0f} s)")
    print(f"{len(wanted) - missed}/{len(wanted)} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
