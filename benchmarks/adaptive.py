"""Spend fewer samples: CERTIFY against CertifyAdp, CertifyAdp + K-consensus, the sequential certifier and the
label test (certified accuracy asked directly, deciding after every draw).

    python benchmarks/adaptive.py [--inputs 100] [--output runs/bench-adaptive]

One digits ensemble of 5 MLPs (trained once with 10% of the training data held out to rank the members
for K-consensus, then reused), sigma = 0.25, the same test inputs and per-input noise seeds for every
contender. The baseline is CERTIFY with n0 = 100, n = 100,000, alpha = 0.001 under soft voting on logits;
each contender targets r = 0.25 and r = 0.5 at the same alpha (beta = 0.0001 for the early stops). The label test
certifies the true label, not a prediction: its rows answer the question certified accuracy asks, and no more; it
runs with CERTIFY's sample cap (125,000), with its two-sided mixture instead of the one-sided default, and with a
budget of 10,000 draws per input.
Printed side by side: certified accuracy at the target, and the factors by which samples, member
evaluations and wall time shrink against the baseline (SampleRF, EvalRF, TimeRF).
"""

from __future__ import annotations

import argparse
import time

import torch

import ensemblecert as ec

SIGMA, ALPHA, BETA = 0.25, 0.001, 0.0001
STAGES = [1_000, 10_000, 125_000]
#: A per-input budget: inputs whose probability lies too close to the threshold to be decided within it are
#: given up (not certified), trading certified accuracy at the margin for samples.
BUDGET = 10_000


def train(output: str, device: str = "cpu") -> ec.RunResult:
    cfg = ec.load_pipeline(None)[0].source | {}
    cfg = {
        **cfg,
        "output": output,
        "device": device,
        "ensemble": {**cfg["ensemble"], "members": 5, "aggregator": {"name": "k_consensus", "k": 2}},
        "certification": {"enabled": False},
    }
    return ec.run(cfg)


def certify_all(name, certifier, ensemble, noise, inputs, labels, indices, batch_size):
    sampler = ec.MonteCarloSampler(ensemble, noise, num_classes=10, batch_size=batch_size)
    start = time.perf_counter()
    given = {"labels": labels} if certifier.needs_label else {}
    certs = ec.certify_inputs(certifier, sampler, inputs, indices=indices, **given)
    seconds = time.perf_counter() - start
    return {
        "name": name,
        "certs": certs,
        "correct": [c.prediction == y for c, y in zip(certs, labels)],
        "samples": sum(c.samples for c in certs),
        "evaluations": sampler.usage.evaluations,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--output", default="runs/bench-adaptive")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the members run")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    trained = train(args.output, args.device)
    members = list(trained.ensemble.members)
    k_consensus = trained.ensemble.aggregator  # ranked on the held-out split
    registry = ec.load_registry()
    soft = ec.build_component("aggregator", {"name": "soft"}, registry)
    full = ec.Ensemble(members, soft).eval()
    fast = ec.Ensemble(members, k_consensus).eval()
    noise = ec.build_component("noise", {"name": "gaussian", "sigma": SIGMA}, registry)
    test = ec.build_component("dataset", "digits", registry).load().test
    indices = list(range(0, len(test), 3))[: args.inputs]
    inputs = torch.stack([test[i][0] for i in indices])
    labels = [int(test[i][1]) for i in indices]
    print(
        f"{len(indices)} digits test inputs, 5 members, sigma = {SIGMA}, K-consensus ranking {k_consensus.order}, k = 2"
    )

    def build(spec):
        return ec.build_component("certifier", spec, registry)

    run = lambda name, mech, ens: certify_all(name, mech, ens, noise, inputs, labels, indices, args.batch_size)  # noqa: E731
    baseline = run("cohen n=100,000", build({"name": "cohen", "n0": 100, "n": 100_000, "alpha": ALPHA}), full)
    rows, costly = [], []
    for radius in (0.25, 0.5):
        adp = {"name": "certify_adp", "radius": radius, "n0": 100, "stages": STAGES, "alpha": ALPHA, "beta": BETA}
        seq = {
            "name": "sequential",
            "radius": radius,
            "n0": 100,
            "batch": 1000,
            "max_samples": STAGES[-1],
            "alpha": ALPHA,
            "beta": BETA,
        }
        label = {"name": "label_test", "radii": [radius], "alpha": ALPHA, "beta": BETA, "max_samples": STAGES[-1]}
        budget = {**label, "max_samples": BUDGET}
        capped = [  # the label test with its defaults and CERTIFY's cap: where its draws go is printed below
            run("label_test (true label)", build(label), full),
            run("label_test (true label) + k_consensus", build(label), fast),
        ]
        contenders = [
            run("certify_adp", build(adp), full),
            run("certify_adp + k_consensus", build(adp), fast),
            run("sequential", build(seq), full),
            run("sequential + k_consensus", build(seq), fast),
            *capped,
            run("label_test (true label), two-sided mixture", build({**label, "mixture": "two-sided"}), full),
            run(f"label_test (true label), at most {BUDGET:,} draws", build(budget), full),
            run(f"label_test (true label), at most {BUDGET:,} draws + k_consensus", build(budget), fast),
        ]
        costly += [(radius, c) for c in capped]
        base_acc = sum(ok and c.radius >= radius for ok, c in zip(baseline["correct"], baseline["certs"])) / len(
            indices
        )
        rows.append((radius, "cohen n=100,000", base_acc, 1.0, 1.0, 1.0))
        for c in contenders:
            acc = sum(ok and cert.radius >= radius for ok, cert in zip(c["correct"], c["certs"])) / len(indices)
            rows.append(
                (
                    radius,
                    c["name"],
                    acc,
                    baseline["samples"] / c["samples"],
                    baseline["evaluations"] / c["evaluations"],
                    baseline["seconds"] / c["seconds"],
                )
            )
    print()
    print("| r | certifier | certified accuracy at r | SampleRF | EvalRF | TimeRF |")
    print("| --- | --- | --- | --- | --- | --- |")
    for radius, name, acc, srf, erf, trf in rows:
        print(f"| {radius:g} | {name} | {acc:.1%} | {srf:.1f} | {erf:.1f} | {trf:.1f} |")
    print(
        f"\nbaseline: {baseline['samples']:,} samples, {baseline['evaluations']:,} member evaluations, "
        f"{baseline['seconds']:.1f} s"
    )
    for radius, c in costly:  # where the label test's draws go: a few inputs near the threshold
        draws = sorted((cert.samples for cert in c["certs"]), reverse=True)
        share = sum(draws[:3]) / sum(draws)
        rest = (sum(draws) - sum(draws[:3])) / max(1, len(draws) - 3)
        print(
            f"r = {radius:g}, {c['name']}: the 3 costliest inputs drew {', '.join(f'{d:,}' for d in draws[:3])} "
            f"({share:.0%} of all draws); the other inputs {rest:,.0f} on average"
        )


if __name__ == "__main__":
    main()
