import pytest

from lmforge.lab import LABS, run_experiment
from lmforge.lab.warmup import _verdict


def test_warmup_verdict_reads_the_table():
    rows = [["0.001", 0, "4.0"], ["0.001", 10, "4.2"], ["0.1", 0, "diverged"], ["0.1", 10, "5.0"]]
    text = _verdict(rows)
    assert text.startswith(
        "Warmup gave the lower final loss at peak lr 0.1; no warmup did at 0.001."
    )


def test_registry_holds_the_experiments():
    assert "warmup" in LABS
    exp = LABS.get("warmup")
    assert exp.claim and exp.minutes > 0


@pytest.mark.slow
@pytest.mark.assets
def test_warmup_quick_writes_a_report(tmp_path):
    path = run_experiment("warmup", tmp_path / "lab", quick=True)
    text = path.read_text()
    assert "| peak lr | warmup steps | final validation loss |" in text
    assert (tmp_path / "lab" / "curves.png").stat().st_size > 1000


@pytest.mark.assets
def test_peft_compare_quick_on_smollm2(tmp_path):
    import json

    path = run_experiment("peft-compare", tmp_path / "lab", quick=True)
    text = path.read_text()
    assert "| zero-shot | none | 0 | 0.000% |" in text and "failed" not in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert set(results) == {"zero-shot", "lora", "bitfit", "prompt"}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["peak_rss_mb"] > 0 for r in results.values())
    assert results["lora"]["trainable"] == 460_800  # r=8 on q and v of 30 layers


@pytest.mark.assets
def test_qlora_quick_on_smollm2(tmp_path):
    import json

    text = run_experiment("qlora", tmp_path / "lab", quick=True).read_text()
    assert "| NF4 + DQ | 4.127 |" in text and "failed" not in text
    assert "follows fp32 AdamW exactly" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    errors = {row[0]: row[1] for row in results["errors"]}
    assert errors["NF4"] < errors["INT4"] < errors["FP4"]  # block 64, normal weights
    ppl = results["perplexity"]
    assert ppl["NF4 + DQ"]["perplexity"] < ppl["FP4"]["perplexity"]
    assert set(results["finetune"]) == {"LoRA (fp32 base)", "QLoRA (NF4 + DQ base)"}


def test_instruct_answers_are_parsed_by_their_first_topic_word():
    from lmforge.lab.instruct import parse_label

    assert parse_label("It would appear in the Sport section.") == "sport"
    assert parse_label("Tag: tech, not business") == "tech"
    assert parse_label("sports and technology") is None  # whole words only


@pytest.mark.assets
def test_instruct_quick_on_smollm2(tmp_path):
    import json

    text = run_experiment("instruct", tmp_path / "lab", quick=True).read_text()
    assert "| phrasings | before tuning | after tuning |" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert results["before"]["seen"]["n"] == 6 and results["after"]["heldout"]["n"] == 6
    assert (tmp_path / "lab" / "sft" / "delta" / "delta_config.json").exists()


def test_a_finished_lab_run_is_reused_when_its_config_is_the_same(tmp_path, monkeypatch):
    import json

    from lmforge.config import from_dict, save_yaml
    from lmforge.lab import peft_compare
    from lmforge.recipes.finetune import FinetuneConfig

    cfg = from_dict(
        FinetuneConfig, {"method": "lora", "train": {"max_steps": 3, "warmup_steps": 1}}
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_yaml(cfg, run_dir / "lab-config.yaml")
    (run_dir / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))
    monkeypatch.setattr(peft_compare.subprocess, "run", lambda *a, **k: 1 / 0)  # never called
    assert peft_compare.finetune_child(cfg, run_dir) == {"test_accuracy": 0.5}
    cfg.train.max_steps = 4  # another config: the run would be made again
    with pytest.raises(ZeroDivisionError):
        peft_compare.finetune_child(cfg, run_dir)


def test_the_architecture_labs_are_registered():
    assert {"moe", "moefication", "retnet"} <= set(LABS.names())


@pytest.mark.assets
def test_retnet_quick_writes_a_report(tmp_path):
    import json

    text = run_experiment("retnet", tmp_path / "lab", quick=True).read_text()
    assert "| model | parameters | ms/step | tokens/s | val loss |" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    params = [r["parameters"] for r in results.values()]
    assert abs(params[0] - params[1]) / params[0] < 0.01  # equal size within 1%
    assert (tmp_path / "lab" / "retnet-val.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.assets
def test_moe_quick_writes_a_report(tmp_path):
    import json

    text = run_experiment("moe", tmp_path / "lab", quick=True).read_text()
    assert (
        "| run | parameters | per token | steps |" in text
        and "Expert use, busiest over idlest" in text
    )
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert set(results) == {"dense", "moe", "switch top-1", "dense, equal time"}
    assert results["moe"]["parameters"] > 2 * results["dense"]["parameters"]
    assert results["moe"]["active"] - results["dense"]["active"] < 0.01 * results["dense"]["active"]


@pytest.mark.slow
@pytest.mark.assets
def test_moefication_quick_writes_a_report(tmp_path):
    import json

    text = run_experiment("moefication", tmp_path / "lab", quick=True).read_text()
    assert "| model | experts used | FFN share | perplexity | ratio to dense |" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    for r in results.values():  # every expert on is the dense model
        assert r["rows"][-1]["ratio"] == pytest.approx(1.0, abs=1e-4)
    assert results["native relu"]["zeros"] > 0.1 and results["native silu"]["zeros"] == 0.0


def test_moefication_verdict_reads_the_rows():
    from lmforge.lab.moefication import verdict

    rows = lambda r1, r2: [  # noqa: E731
        {"k": "dense", "share": 1.0, "ratio": 1.0},
        {"k": 1, "share": 0.25, "ratio": r1},
        {"k": 2, "share": 0.5, "ratio": r2},
    ]
    text = verdict(
        {
            "native relu": {
                "zeros": 0.6,
                "rows": rows(1.04, 1.01),
                "coverage": {"router": 0.655, "oracle": 0.69},
            },
            "native silu": {"zeros": 0.0, "rows": rows(1.2, 1.06)},
        }
    )
    assert "native relu (60% of FFN activations exactly zero): perplexity ratio 1.040" in text
    assert "native silu (0% of FFN activations exactly zero)" in text
    assert "within 5% of dense from no share below 100%" in text
    assert "a quarter of the experts held 66% of the activation mass as routed, 69% at best" in text
    assert "): met." in text and "the ReLU model lost less than the SiLU model" in text
