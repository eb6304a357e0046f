"""``export --out``: only a bundle is ever replaced, only with ``--overwrite``, and nothing else is touched."""

from __future__ import annotations

import json
import shutil

import pytest


def _export(out, tiny_classifier, examples, pm, **options):
    from tunewright.edge import export_bundle

    model, tokenizer = tiny_classifier
    return export_bundle(
        model,
        tokenizer,
        "classification",
        examples,
        out,
        quantize="none",
        labels=["neg", "pos"],
        pm=pm,
        bench=False,
        log=lambda m: None,
        **options,
    )


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_folder_holding_the_users_files_is_refused_and_kept(
    tmp_path, tiny_classifier, classification_examples, edge_pm
):
    from tunewright import UsageError

    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.jsonl").write_text('{"text": "mine", "label": "pos"}\n')
    (out / "notes.txt").write_text("do not lose me")
    before = _snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(
            UsageError,
            match=r"--out: .*project exists and is not a tunewright bundle \(it holds "
            r"data/train.jsonl, notes.txt\); nothing was changed",
        ):
            _export(out, tiny_classifier, classification_examples, edge_pm, overwrite=overwrite)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no staging folder left


def test_an_existing_bundle_is_replaced_only_with_overwrite(
    tmp_path, tiny_classifier, classification_examples, edge_pm
):
    from tunewright import UsageError
    from tunewright.edge.runtime import verify_bundle

    out = tmp_path / "bundle"
    _export(out, tiny_classifier, classification_examples, edge_pm)
    first = _snapshot(out)
    with pytest.raises(UsageError, match=r"holds a bundle already; pass --overwrite to replace it"):
        _export(out, tiny_classifier, classification_examples, edge_pm)
    assert _snapshot(out) == first
    result = _export(out, tiny_classifier, classification_examples[:20], edge_pm, overwrite=True)
    assert result.manifest["parity"]["bundle_vs_tuned"]["examples"] == 20  # the new bundle is there
    assert _snapshot(out) != first and verify_bundle(out)["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle"
    ]  # the old one is gone, no leftovers


def test_a_bundle_with_added_files_is_refused_even_with_overwrite(tmp_path, classifier_bundle):
    from tunewright import UsageError
    from tunewright.edge.export import check_out

    out = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, out)
    (out / "my-results.csv").write_text("keep")
    with pytest.raises(
        UsageError, match=r"holds a bundle and files that are not part of it \(my-results.csv\)"
    ):
        check_out(out, overwrite=True)


@pytest.mark.parametrize("case", ["file", "foreign manifest", "empty folder", "missing"])
def test_other_kinds_of_out(tmp_path, case):
    from tunewright import UsageError
    from tunewright.edge.export import check_out

    out = tmp_path / "out"
    if case == "file":
        out.write_text("x")
        with pytest.raises(UsageError, match="exists and is not a folder"):
            check_out(out, overwrite=True)
    elif case == "foreign manifest":  # a web app's manifest.json is not a bundle
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"name": "my app", "files": {}}))
        with pytest.raises(
            UsageError, match=r"is not a tunewright bundle \(it holds manifest.json\)"
        ):
            check_out(out, overwrite=True)
    elif case == "empty folder":
        out.mkdir()
        check_out(out, overwrite=False)  # nothing to lose
    else:
        check_out(out, overwrite=False)
