"""Stage 4 against stage 2 (scripts/stage4.sh): the abstention metrics of each model on the test split (threshold
refitted on validation) and on the contrastive split, the issue's do-no-harm checks, into OUT/stage4_summary-seedS.json
and printed as a table.

Do no harm, per stage-4 model: hallucination rate <= 0.02 and not higher on the contrastive split than stage 2's;
exact match on answerable rows down by at most 0.01; phi@1 not lower. Gain: the model's own over-abstention down by
>= 0.05 or its own abstain F1 up by >= 0.03 (one seed here: the paired interval needs the 3-seed ablation).
"""

import argparse
import json
import os

FIELDS = (
    "exact_match",
    "phi@1",
    "hallucination_rate",
    "answerable_abstain_rate",
    "abstain_f1",
    "model_hallucination_rate",
    "model_answerable_abstain_rate",
    "model_abstain_f1",
)


def metrics(path: str) -> dict:
    with open(os.path.join(path, "eval_results.json")) as f:
        return {k: json.load(f)["metrics"].get(k) for k in FIELDS}


def checks(model: dict, base: dict) -> dict:
    test, contrastive = model["test"], model["contrastive"]
    return {
        "hallucination_rate_at_most_0.02": test["hallucination_rate"] <= 0.02,
        "contrastive_hallucination_not_higher": contrastive["hallucination_rate"]
        <= base["contrastive"]["hallucination_rate"],
        "exact_match_down_at_most_0.01": test["exact_match"] >= base["test"]["exact_match"] - 0.01,
        "phi@1_not_lower": test["phi@1"] >= base["test"]["phi@1"],
        "over_abstention_down_0.05_or_f1_up_0.03": (
            test["model_answerable_abstain_rate"] <= base["test"]["model_answerable_abstain_rate"] - 0.05
            or test["model_abstain_f1"] >= base["test"]["model_abstain_f1"] + 0.03
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = {"stage2": "stage2", "dpo": f"stage4_dpo-seed{args.seed}", "grpo": f"stage4_grpo-seed{args.seed}"}
    results = {
        key: {split: metrics(os.path.join(args.out, "eval", name + suffix))
              for split, suffix in (("test", ""), ("contrastive", "-contrastive"))}
        for key, name in names.items()
    }  # fmt: skip
    summary = {"seed": args.seed, "metrics": results}
    summary["checks"] = {key: checks(results[key], results["stage2"]) for key in ("dpo", "grpo")}
    with open(os.path.join(args.out, f"stage4_summary-seed{args.seed}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{'model / split':24}" + "".join(f"{field[:14]:>15}" for field in FIELDS))
    for key, splits in results.items():
        for split, values in splits.items():
            print(f"{key + ' / ' + split:24}" + "".join(f"{values[field]:15.3f}" for field in FIELDS))
    print(json.dumps(summary["checks"], indent=1))


if __name__ == "__main__":
    main()
