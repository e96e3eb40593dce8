"""Runs into curves: the labels a report gives curves that share a role and width, and old class paths."""

from lic_kd.reporting.curves import curve_label, curve_settings, distinct_labels
from lic_kd.results import current_targets


def test_curves_of_one_role_and_width_are_named_by_what_differs_only():
    settings = [
        {"steps": 4, "data.crop_size": 64, "teacher.checkpoint": "/a/t1"},
        {"steps": 6, "data.crop_size": 64, "teacher.checkpoint": "/a/t1"},
    ]
    assert distinct_labels("kd-N8", settings) == ["kd-N8 steps=4", "kd-N8 steps=6"]


def test_a_path_shortened_to_the_same_name_gets_a_hash_not_a_merged_curve():
    settings = [{"teacher.checkpoint": "/x/run"}, {"teacher.checkpoint": "/y/run"}]
    labels = distinct_labels("kd-N8", settings)
    assert labels[0] != labels[1] and all(label.startswith("kd-N8 teacher.checkpoint=run #") for label in labels)


def test_a_teachers_retrained_weights_are_named_by_their_hash_only_when_the_path_is_the_same():
    same_path = [{"teacher.checkpoint": "/t", "teacher.checkpoint_sha256": h} for h in ("aaa", "bbb")]
    assert distinct_labels("kd", same_path) == ["kd teacher.checkpoint_sha256=aaa", "kd teacher.checkpoint_sha256=bbb"]
    other_path = [{"teacher.checkpoint": p, "teacher.checkpoint_sha256": h} for p, h in (("/t1", "a"), ("/t2", "b"))]
    assert distinct_labels("kd", other_path) == ["kd teacher.checkpoint=t1", "kd teacher.checkpoint=t2"]


def test_a_setting_that_follows_from_another_is_left_out_of_the_label():
    """A plain student cut from the teacher records the teacher it was cut from, one from random init none: the
    init tells the two curves apart, the teacher's keys add nothing but length."""
    settings = [
        {"student.init": "random", "teacher.checkpoint": None, "teacher.architecture": None, "steps": 2000},
        {"student.init": "teacher", "teacher.checkpoint": "/t/ladder", "teacher.architecture": "SH", "steps": 2000},
        {"student.init": "teacher", "teacher.checkpoint": "/t/ladder", "teacher.architecture": "SH", "steps": 200},
    ]
    assert distinct_labels("student-N16", settings) == [
        "student-N16 steps=2000,init=random",
        "student-N16 steps=2000,init=teacher",
        "student-N16 steps=200,init=teacher",
    ]
    settings[2]["teacher.checkpoint"] = "/t/other"  # two teachers: which one is part of the curve's name
    assert distinct_labels("student-N16", settings)[2] == "student-N16 steps=200,init=teacher,teacher.checkpoint=other"


def test_curve_label_says_role_pruning_word_lengths_and_widths():
    run = {
        "role": "kd",
        "architecture": "ScaleHyperprior",
        "N": 16,
        "M": 96,
        "kd_variant": "single",
        "prune": {"keep": 0.5},
        "quant": {"mode": "qat", "weight_bits": 8, "activation_bits": 8, "parts": "decoder"},
    }
    assert curve_label(run) == "qat-w8a8-decoder-pruned0.5-kd-N16-M96"
    assert curve_label({"role": "codec", "architecture": "WebP"}) == "WebP"


def test_results_written_before_the_restructure_are_the_same_curve_as_today():
    before = {
        "settings": {"loss._target_": "lic_kd.losses.make_rd_loss", "model._target_": "lic_kd.models.Autoencoder"}
    }
    today = {
        "settings": {
            "loss._target_": "lic_kd.training.losses.make_rd_loss",
            "model._target_": "lic_kd.models.networks.Autoencoder",
        }
    }
    assert curve_settings(before) == curve_settings(today)
    assert current_targets({"a": ["lic_kd.module.budget_plateau", 3]}) == {
        "a": ["lic_kd.training.module.budget_plateau", 3]
    }


def test_report_of_a_shipped_ladder_against_a_published_curve_from_the_command_line(tmp_path):
    """`python -m lic_kd.report --ladder DIR --reference JSON --anchor ...`: the ladder's teacher curve from its
    record, labelled so, with a BD value against CompressAI's published hyperprior (no Kodak coded again)."""
    import csv
    import json

    from conftest import REPO, run_module

    ladder = REPO / "teachers" / "bmshj2018-hyperprior-N64-M96"
    reference = REPO / "data" / "reference" / "compressai-bmshj2018-hyperprior_mse_cuda.json"
    anchor = ["--anchor", "bmshj2018-hyperprior [ref]"]
    run_module("lic_kd.report", "--ladder", str(ladder), "--reference", str(reference), *anchor, "--name", "ladder",
               "--out-root", str(tmp_path), "--no-figures")  # fmt: skip
    table = (tmp_path / "ladder" / "rd_table.md").read_text()
    assert table.count("[ladder record") == len(json.loads((ladder / "ladder.json").read_text())["rungs"])
    rows = list(csv.DictReader(open(tmp_path / "ladder" / "bd_rate.csv")))
    ours = [r for r in rows if "[ladder record" in r["curve"]]
    assert ours and all(float(r["bd_psnr_db"]) < 0 for r in ours)  # a CPU-budget ladder below the published one
