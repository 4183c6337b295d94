"""The never-ending motion run (`make motion`): each stretch continues the shipped tiny LaVie, resumes its run
folder, is recorded in the card, and ships only when its last probe moved up from its first."""

import json
import shutil

from lavie_model.evaluation.stats import Rate
from lavie_model.tiny.tiny_lavie import CARD_BEGIN, lavie_root, main, moved_up, weights_identity


def test_the_base_ships_only_when_the_classifier_or_the_sampled_direction_moved_up():
    def row(hits, sampled=None):
        return {"direction_classifier": Rate(hits, 96).as_dict(),
                **({"sampled_direction": Rate(sampled, 96).as_dict()} if sampled is not None else {})}

    assert moved_up("base", row(44), row(56)) and moved_up("base", row(44, 30), row(56, 30))
    assert not moved_up("base", row(44), row(44)) and not moved_up("base", row(44), row(30))
    assert moved_up("base", row(52, 34), row(50, 42))  # the sampled direction up, the classifier held
    assert not moved_up("base", row(52, 34), row(35, 42))  # ... but not at the classifier's cost
    assert not moved_up("base", row(44, 34), row(56, 20))  # nor the classifier at the samples' cost
    ahead = {"beats_latent_blend": Rate(39, 96).as_dict()}
    assert moved_up("interpolation", ahead, {"beats_latent_blend": Rate(50, 96).as_dict()})
    assert not moved_up("interpolation", ahead, ahead)


def test_a_stretch_resumes_its_run_and_is_recorded_in_the_card(tmp_path):
    root = tmp_path / "lavie"
    shutil.copytree(lavie_root(), root, ignore=shutil.ignore_patterns(".*"))
    before = weights_identity(root / "unet_base")
    recorded = len(json.loads((root / "card.json").read_text()).get("continuations", []))
    stretch = ["continue", "--shipped", str(root), "--runs", str(tmp_path / "runs"), "--max-seconds", "0",
               "--held-out-clips", "4", "--sampling-steps", "2", "--device", "cpu",
               "--set", "batch_size=2", "eval_every=1", "log_every=1", "checkpoint_every=1"]
    main(stretch + ["--no-ship"])  # one step: the deadline has passed when the first one ends
    card = json.loads((root / "card.json").read_text())
    entry = card["continuations"][-1]
    assert entry["run"] == f"base-{before}" and entry["steps"] == 1 and entry["clips"] == 2
    assert [r["step"] for r in entry["curve"]] == [0, 1] and len(entry["stretches"]) == 1
    assert "sampled_direction" in entry["curve"][0] and "sampled_direction" in entry["curve"][-1]
    assert not entry["shipped"] and weights_identity(root / "unet_base") == before
    assert f"| {entry['run']} | base |" in (root / "MODEL_CARD.md").read_text().split(CARD_BEGIN)[1]

    main(stretch)  # the same shipped weights: the same run folder, resumed from its checkpoint
    card = json.loads((root / "card.json").read_text())
    entry = card["continuations"][-1]
    assert len(card["continuations"]) == recorded + 1 and len(entry["stretches"]) == 2
    assert [r["step"] for r in entry["curve"]] == [0, 1, 2] and entry["stretches"][-1]["to_step"] == 2
    if entry["shipped"]:  # it moved up: the EMA weights replaced the shipped file, the card carries their scores
        assert moved_up("base", entry["curve"][0], entry["curve"][-1])
        assert weights_identity(root / "unet_base") != before
        assert card["shipped"]["base"]["scores"] == entry["curve"][-1] and card["shipped"]["base"]["from_run"] == entry["run"]
    else:
        assert not moved_up("base", entry["curve"][0], entry["curve"][-1])
        assert weights_identity(root / "unet_base") == before


def test_the_readme_status_is_the_cards():
    from pathlib import Path

    from lavie_model.tiny.tiny_lavie import status

    card = json.loads((lavie_root() / "card.json").read_text())
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for line in status(card):
        assert line in readme, f"README.md's tiny LaVie status should read:\n{line}"
    assert "\n".join(status(card)) in (lavie_root() / "MODEL_CARD.md").read_text()
