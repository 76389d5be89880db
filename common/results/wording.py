"""Sentences generated from run records: what the runs can and cannot show, in words a learner reads."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from common.model.resnet import trainable_blocks
from common.results.evaluation import dominant_prediction
from common.results.records import RunRecord


def timing_notes(records: dict[tuple[str, str], RunRecord], spread: float = 1.5) -> list[str]:
    """A warning for every run whose epochs took very different times: its speed ratio is noise."""
    lines = []
    for record in records.values():
        seconds = record.history["epoch_seconds"]
        if len(seconds) > 1 and seconds.max() > spread * seconds.min():
            lines.append(f"{record.label}: its epochs took {seconds.min():.1f} to {seconds.max():.1f} s on this machine "
                         "(something else was running): read its speed ratio as noise, not as the engine's cost.")
    return lines


def _together(runs: list[tuple[str, str]]) -> str:
    """(engine, name) pairs of one name as "plain / scratch", or "plain, ignite, lightning / scratch" for runs that
    gave the same numbers."""
    return f"{', '.join(engine for engine, _ in runs)} / {runs[0][1]}"


def _grouped(items: dict) -> dict[tuple, list]:
    """Labels grouped by their (rounded) numbers: the engines compute one thing, so say it once."""
    groups: dict[tuple, list[str]] = {}
    for label, key in items.items():
        groups.setdefault(key, []).append(label)
    return groups


def describe_fit(gaps: pd.DataFrame, chance: float) -> list[str]:
    """One sentence per run (runs with the same numbers together) about over- and underfitting."""
    keys = {run: (run[1], int(row["epoch"]), round(row["train_acc"], 2), round(row["val_acc"], 2),
                  round(row["acc_gap"], 2)) for run, row in gaps.iterrows()}
    lines = []
    for (_, epoch, train_acc, val_acc, gap), runs in _grouped(keys).items():
        if val_acc < chance + 0.1 and train_acc < chance + 0.1:
            verdict = "learned next to nothing yet: training and validation accuracy both near chance"
        elif val_acc < chance + 0.1:
            verdict = ("validation accuracy is near chance: what it learned on its training images does not carry over "
                       "to new ones yet, so the gap says it has not learned the task, not that it memorised")
        elif gap > 0.15:
            verdict = f"fits its training images much better than new ones (gap {gap:+.2f}): overfitting"
        elif gap < -0.05:
            verdict = ("does better on validation than on its own training batches, which see dropout and "
                       f"augmentation (gap {gap:+.2f}): no sign of overfitting yet")
        else:
            verdict = f"training and validation accuracy are close (gap {gap:+.2f}): no overfitting yet"
        loss_gap = gaps.loc[runs[0], "loss_gap"]
        if loss_gap > 0.5:
            verdict += (f"; its validation loss is {loss_gap:.2f} above its training loss: its wrong answers on new "
                        "images come with high confidence")
        lines.append(f"{_together(runs)}: after epoch {epoch}, train {train_acc:.2f} vs validation {val_acc:.2f}: {verdict}.")
    return lines


def data_caveats(metas) -> list[str]:
    """The first sentences on any set of runs: chance level, and whether the data was the offline demo."""
    n = len(metas[0].class_names)
    lines = [f"Chance level is {1 / n:.2f} ({n} classes, about equally many test images each)."]
    if any(m.is_demo_data for m in metas):
        lines.append("These runs used the offline demo data (drawn toy vegetables), not the real photographs: "
                     "their accuracies say nothing about the real dataset.")
    return lines


# Why random "transfer" runs misbehave, said one way wherever a sentence needs it (01-05's words, 08's probe).
UNNORMALISED = ("Random frozen blocks do not normalise what they compute (their BatchNorm statistics are still the initial "
                "mean 0 and variance 1), so the features they hand on are many times larger than a trained network's")


def what_the_runs_show(records: dict[tuple[str, str], RunRecord]) -> list[str]:
    """Sentences, generated from the records, saying what these runs can and cannot show."""
    lines = data_caveats([record.meta for record in records.values()])
    random = {(r.engine, r.name): dominant_prediction(r.predictions) for r in records.values() if r.meta.random_transfer}
    if random:
        modes = sorted({r.meta.trainable for r in records.values() if r.meta.random_transfer})
        adapts = " / ".join(_listed(trainable_blocks(mode)) for mode in modes)
        lines.append("The 'transfer' runs started from RANDOM weights (no ImageNet weights were used), so they "
                     "transferred nothing: their frozen blocks compute random features that training never improves, "
                     f"and only {adapts} can adapt. This run cannot show what transfer learning gains.")
        collapsed = {label: (cls, round(share, 2)) for label, (cls, share) in random.items() if share > 0.5}
        for (cls, share), runs in _grouped(collapsed).items():
            lines.append(f"{_together(runs)}: predicts '{cls}' for {share:.0%} of the test images. {UNNORMALISED}; "
                         "what trains on top of them is evaluated with BatchNorm running statistics (notebook 00) that "
                         "lag behind those large values, and falls back on one class. The features are not empty: "
                         "notebook 08 standardises them and measures what a linear probe reads off them. What transfers "
                         "is a trained network's features, in their trained scale.")
    return lines + which_did_better(records)


def what_the_runs_show_in_short(records: dict[tuple[str, str], RunRecord]) -> list[str]:
    """Notebooks 02 and 03, after 01 has said it in full: which did better, and a line when the 'transfer' runs had
    no pretrained weights."""
    lines = which_did_better(records)
    if any(record.meta.random_transfer for record in records.values()):
        lines.append("The 'transfer' runs started from RANDOM weights, so this says nothing about transfer learning "
                     "(notebook 01 explains why).")
    return lines


def _within_one_image(gap: float, images: int) -> bool:
    """Whether two accuracies on ``images`` test images differ by at most one image (half an image of slack for
    rounding): no winner to speak of."""
    return abs(gap) < 1.5 / images


def which_did_better(records: dict[tuple[str, str], RunRecord]) -> list[str]:
    """Transfer against scratch on test accuracy, per engine (engines with the same numbers together)."""
    lines = []
    pairs = {engine: (round(records[(engine, "transfer")].meta.test_acc, 4), round(records[(engine, "scratch")].meta.test_acc, 4),
                      records[(engine, "transfer")].meta.epochs_run, records[(engine, "scratch")].meta.epochs_run)
             for engine in dict.fromkeys(e for e, _ in records)
             if (engine, "transfer") in records and (engine, "scratch") in records}
    images = {engine: len(records[(engine, "transfer")].predictions) for engine in pairs}  # a row per test image
    for (t, s, te, se), engines in _grouped(pairs).items():
        one = 1 / images[engines[0]]
        better = ("neither did better here: they differ by at most one test image" if _within_one_image(t - s, images[engines[0]])
                  else f"{'transfer' if t > s else 'scratch'} did better here")
        epochs = f"{te} epochs each" if te == se else f"{te} and {se} epochs"
        lines.append(f"{', '.join(engines)}: transfer {t:.1%} vs scratch {s:.1%} test accuracy after {epochs} "
                     f"({images[engines[0]]} test images, one is {one:.1%}): {better}.")
    return lines


def variations_against_recipe(recipe, variations, history=None) -> str:
    """What an engine notebook's `variations` run shows beside the recipe's transfer run (both RunMeta): their test
    accuracies, how much one test image is, and what random weights leave unshown; with the variations' ``history``
    (rows with stage and train_loss), why a head-alone first stage on random weights starts at a huge loss."""
    images = sum(variations.class_counts.get("test", {}).values()) or 1
    gap = variations.test_acc - recipe.test_acc
    verdict = ("about the same" if _within_one_image(gap, images)
               else "better" if gap > 0 else "worse")
    epochs = (f"{recipe.epochs_run} epochs each" if recipe.epochs_run == variations.epochs_run
              else f"{variations.epochs_run} and {recipe.epochs_run} epochs")
    line = (f"variations: test accuracy {variations.test_acc:.1%} against the recipe's {recipe.test_acc:.1%} after "
            f"{epochs} ({images} test images, one is {1 / images:.1%}): {verdict} here.")
    if variations.random_transfer:
        line += (" Both started from RANDOM weights, so the head-first stage protected no pretrained features: this "
                 "run shows the variations at work, not what they gain with ImageNet weights.")
        line += _huge_first_loss(variations, history)
    return line


def _huge_first_loss(meta, history) -> str:
    """Why a head-alone first stage on random frozen blocks starts far above a guess's loss, when it does."""
    if history is None or not meta.stages or meta.stages[0]["trainable"] != "head":
        return ""
    first, guess = float(history["train_loss"].iloc[0]), math.log(len(meta.class_names))
    if first < 2 * guess:
        return ""
    return (f" Its first epoch's training loss, {first:.1f}, is far above a uniform guess's ln({len(meta.class_names)})"
            f" = {guess:.1f}: in the head-alone stage every block is frozen. {UNNORMALISED}, and the head starts on them."
            + (" Once layer4 trains, its BatchNorm normalises them again and the loss drops."
               if float(history["train_loss"].iloc[-1]) < first / 2 else ""))


def _listed(items) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _times(ratio: float) -> str:
    """A ratio as people write it, to two figures: 1.3x, 12x, 820x (a third figure would be this machine's noise)."""
    return f"{ratio:.1f}x" if ratio < 10 else f"{float(f'{ratio:.2g}'):.0f}x"


def _faster(ratio: float) -> str:
    """How a run's speed compares, from scratch's time over its time: '2.1x faster', '1.3x slower', or 'about as fast'
    within 15 % (identical settings differ by up to 20 % per epoch on a shared 2-core machine)."""
    if 1 / 1.15 <= ratio <= 1.15:
        return "about as fast"
    return f"{_times(ratio)} faster" if ratio > 1 else f"{_times(1 / ratio)} slower"


def describe_modes(records: dict[str, RunRecord], table: pd.DataFrame) -> list[str]:
    """Sentences, generated from the records, on what the spectrum of runs shows and what it cannot."""
    metas = [record.meta for record in records.values()]
    lines = data_caveats(metas)
    if any(m.random_transfer for m in metas):
        lines.append("Every mode but scratch started from RANDOM weights (no ImageNet weights were used): a frozen "
                     "random block computes features nobody trained, so which mode learns best is NOT shown by "
                     "this run; what each costs (parameters, memory, seconds per epoch) is, because cost does not "
                     "depend on the weights.")
    all_is_scratch = (any(m.random_transfer for m in metas) and {"all", "scratch"} <= set(records)
                      and np.allclose(records["all"].history["train_loss"], records["scratch"].history["train_loss"]))
    if all_is_scratch:
        once = records["all"].folder == records["scratch"].folder
        lines.append("With random weights, fine-tuning everything IS training from scratch (same seed, same initial "
                     "weights, same steps), so " + ("'all' is scratch's run here, trained once and shown under both names"
                                                    if once else "'all' and 'scratch' computed the same numbers")
                     + ". With ImageNet weights they differ.")
    chance_loss = np.log(len(metas[0].class_names))
    huge = [name for name, r in records.items() if r.meta.random_transfer and r.history["train_loss"].max() > 3 * chance_loss]
    if huge:
        lines.append(f"{', '.join(huge)}: first training losses were far above chance level's {chance_loss:.2f} (ln of the number of "
                     f"classes). {UNNORMALISED}, so the new head's first outputs are huge (pretrained blocks carry BatchNorm "
                     "statistics learned on ImageNet, which keep their features at an ordinary scale). Notebook 08's probe "
                     "standardises each feature first, which is why it can read more off the same kind of features.")
    answers = {name: dominant_prediction(r.predictions) for name, r in records.items()}
    one_class = {name: answer for name, answer in answers.items() if answer[1] > 0.5}
    if one_class:
        lines.append(f"{_listed(list(one_class))} answered one class for most test images ("
                     + "; ".join(f"{name}: '{cls}' for {share:.0%} of the test images" for name, (cls, share) in one_class.items())
                     + "): they learned little beyond that one answer, so their rank below says little.")
    one = 1 / len(records[next(iter(records))].predictions)  # one test image
    stuck = [name for name, r in records.items() if name not in one_class
             and (r.history["val_acc"] - 1 / len(r.meta.class_names)).abs().max() < one]
    if stuck:
        lines.append(f"{_listed(stuck)} never left chance (validation accuracy within one image of it in every "
                     "epoch), so their rank below says nothing.")
    for name, record in records.items():
        meta, val = record.meta, record.history["val_acc"]
        if len(meta.stages) > 1 and meta.best_epoch is not None and meta.best_epoch < meta.stages[1]["first_epoch"]:
            when = ("in no epoch did it do better than in its first (a tie keeps the earliest), before it unfroze"
                    if (val == val.max()).sum() > 1 else f"its best validation accuracy came in epoch {meta.best_epoch}, "
                    "before it unfroze")
            lines.append(f"{name}: {when}: the weights kept, and tested, are its first stage's (the head alone).")
    if "scratch" in table.index:
        base = table.loc["scratch", "median_epoch_seconds"]
        alike = {"all"} if all_is_scratch else set()
        costs = ", ".join(f"{run} {secs:.2g} s ({'the same computation as scratch' if run in alike else _faster(base / secs)})"
                          for run, secs in table["median_epoch_seconds"].items() if run != "scratch")
        lines.append(f"Median seconds per epoch, against scratch's {base:.2g} s: {costs}.")
        if base < 2:
            lines.append("Epochs this short are mostly fixed costs (the optimizer step, loading, Python) and the noise of "
                         "a shared machine: only large ratios mean something here; the cpu and full budgets give "
                         "epochs long enough to time.")
    cached = table[table["one_off_seconds"] > 0]
    for run, row in cached.iterrows():
        lines.append(f"{run}: computing the features once took {row['one_off_seconds']:.2g} s, after which each epoch "
                     f"is one small matrix product; it has no augmentation (the features are fixed).")
    by_acc = _grouped({run: (round(acc, 4),) for run, acc in table["test_acc"].items()})
    ranked = sorted(by_acc.items(), key=lambda item: -item[0][0])
    lines.append("Test accuracy here, best first: " + "; ".join(f"{acc:.1%} {', '.join(runs)}" for (acc,), runs in ranked)
                 + ".")
    return lines


def describe_feature_scores(scores: pd.DataFrame, chance: float, random_weights: bool, same_network: bool,
                            transfer_collapsed: bool = False) -> list[str]:
    """Notebook 08: what the probe and nearest-neighbour scores of the four feature sets say (``scores``: one row
    per network, columns "linear probe" and "5 nearest neighbours"), and what this run can show;
    ``transfer_collapsed``: whether notebook 01's transfer run answered one class for most test images."""
    probe = scores["linear probe"]
    best = probe.idxmax()
    lines = [f"Chance is {chance:.0%}. The best linear probe reads {probe[best]:.0%} off the features of the network "
             f"'{best}'; the lowest, {probe.min():.0%} ('{probe.idxmin()}')."]
    if random_weights:
        lines.append("Without the ImageNet weights (offline), 'ImageNet' is a second random network"
                     + (", here the very same one: those two rows are equal" if same_network else "") + ". So this run "
                     "cannot show what pretraining gives: only what a random network's features and two short trainings "
                     "do. With the real weights (README, 'Platforms') the ImageNet row is the one to look at.")
        if "fine-tuned" in probe and probe["fine-tuned"] < probe["random init"]:
            lines.append("'fine-tuned' below 'random init' is no paradox here: offline it trained only layer4 and the head "
                         "on top of random frozen blocks, while 'from scratch' trained every layer.")
        elif "fine-tuned" in probe and probe["fine-tuned"] - probe["random init"] < 0.05:
            lines.append("'fine-tuned' is within 5 points of 'random init': offline, training layer4 and the head on top "
                         "of random frozen blocks changed little of what a probe reads off them; 'from scratch' trained "
                         "every layer.")
        if probe["random init"] > 2 * chance and transfer_collapsed:
            lines.append(f"The random features score {probe['random init']:.0%} here, yet notebook 01's 'transfer' run "
                         "built on them fell back on one class: the probe standardises each feature first, and the "
                         "network does not. Unnormalised, a random network's features are many times too large for "
                         "what trains on top of them.")
    else:
        gain = probe["ImageNet"] - probe["random init"]
        lines.append(f"The ImageNet features, before any training on these images, give a probe {gain * 100:+.0f} points "
                     "against random ones: what pretraining brings before fine-tuning starts.")
    return lines


def _points(share: float) -> str:
    """A difference of accuracies in points, signed, with no '-0'."""
    points = round(share * 100)
    return f"{points:+d} points" if points else "0 points"


def describe_data_curve(curve: pd.DataFrame, random_weights: bool, chance: float | None = None) -> list[str]:
    """Notebook 08: where transfer's lead over scratch is largest and smallest, per pair of curves (the head on
    ImageNet against random features; the recipe against scratch), with the spread over the subsets."""
    pairs = {"head on cached features": ("head on ImageNet features", "head on random features"),
             "trained networks": ("recipe (layer4), transfer", "recipe, scratch")}
    means = curve.groupby(["way", "per_class"])["test_acc"].mean()
    ranges = curve.groupby(["way", "per_class"])["test_acc"].agg(lambda a: a.max() - a.min())
    lines = []
    for label, (transfer, scratch) in pairs.items():
        if transfer not in means.index.get_level_values(0):
            continue
        lead = (means[transfer] - means[scratch]).dropna()
        spread = (ranges[transfer] + ranges[scratch]).reindex(lead.index) / 2
        top, low = lead.idxmax(), lead.idxmin()
        equal = (means[transfer] == means[scratch]).all() and (ranges[transfer] == ranges[scratch]).all()
        if equal and label == "head on cached features":  # offline, one network's features under both names
            first, last = means[transfer].index.min(), means[transfer].index.max()
            lines.append(f"{label.capitalize()}: the two rows are equal at every size and subset: offline they are one "
                         f"network. Its test accuracy goes from {means[transfer][first]:.0%} at {first} to "
                         f"{means[transfer][last]:.0%} at {last} image(s) per class.")
            continue
        if chance is not None and (pd.concat([means[transfer], means[scratch]]) < chance + 0.05).all():
            lines.append(f"{label.capitalize()}: both stayed at chance ({chance:.0%}) at every size trained: "
                         f"{_listed([str(k) for k in lead.index])} image(s) per class are too few for either "
                         "to learn, so this pair shows nothing here.")
            continue
        if equal:
            lines.append(f"{label.capitalize()}: the two rows are equal at every size and subset: no lead either way.")
            continue
        if len(lead) == 1:
            text = f"{label.capitalize()}: transfer's lead is {_points(lead[top])} at {top} image(s) per class, the one size trained"
        elif lead[top] - lead[low] < 0.005:
            text = f"{label.capitalize()}: transfer's lead is {_points(lead[top])} at every size"
        else:
            text = (f"{label.capitalize()}: transfer's lead is largest at {top} image(s) per class ({_points(lead[top])}), "
                    f"smallest at {low} ({_points(lead[low])})")
        small = lead.abs() <= spread
        if len(lead) == 1:
            text += "; within the subsets' own spread." if small.any() else "; larger than the subsets' own spread."
        else:
            text += (f"; at {_listed([str(k) for k in lead.index[small]])} image(s) per class it is within the subsets' own spread."
                     if small.any() else "; everywhere larger than the subsets' own spread.")
        lines.append(text)
    if random_weights and any("lead is" in line for line in lines):
        lines.append("Offline both pairs compare two random starts, so these leads are chance and spread, not transfer.")
    return lines


def describe_lr_sweep(sweep, recipe, found) -> list[str]:
    """The engine notebooks' learning-rate finder: what the sweep (an ``LRSweep``) saw, its suggestion against the
    configured rate, the run trained at it against the recipe's transfer run (both RunMeta), and what this run
    cannot show."""
    smooth, suggested, lr = sweep.smoothed(), sweep.suggestion(), recipe.config["lr"]
    lowest = int(smooth.argmin())
    lines = [f"The sweep: {len(sweep.rates)} steps kept, from {sweep.rates[0]:.1e} to {sweep.rates[-1]:.1e} (it stops at 1, "
             f"or where the smoothed loss passes 4 times its lowest); the smoothed loss went from {smooth[0]:.3f} to its "
             f"lowest, {smooth[lowest]:.3f}, at {sweep.rates[lowest]:.1e}"
             + (", its last step: it was still falling, so the suggestion may be low." if lowest == len(smooth) - 1 else ".")]
    if smooth[lowest] > 0.95 * smooth[0]:
        lines.append(f"That is a fall of only {1 - smooth[lowest] / smooth[0]:.0%} before the loss rose: the curve has no "
                     "clear descent, so the suggestion is little more than noise.")
    if suggested == sweep.rates[lowest]:
        lines.append("Here the suggestion is the lowest point itself (the steepest fall ends there, or too few steps "
                     "come before it to measure a slope), which is usually a little too high.")
    ratio = suggested / lr
    lines.append(f"Suggested rate: {suggested:.1e}, " + (f"{_times(ratio)} above the configured {lr:.1e}." if ratio >= 1
                                                       else f"{_times(1 / ratio)} below the configured {lr:.1e}."))
    images = sum(found.class_counts.get("test", {}).values()) or 1
    gap = found.test_acc - recipe.test_acc
    verdict = "about the same" if _within_one_image(gap, images) else "better" if gap > 0 else "worse"
    lines.append(f"Trained at the suggested rate: test accuracy {found.test_acc:.1%} against {recipe.test_acc:.1%} at "
                 f"{lr:.1e}, {found.epochs_run} epochs each ({images} test images, one is {1 / images:.1%}): {verdict} here.")
    if 2 <= len(sweep.rates) < 30:
        lines.append(f"The sweep is coarse: one batch per rate and at most one epoch of this training set, so each step "
                     f"raises the rate {_times(sweep.rates[-1] / sweep.rates[-2])}. With more data it takes 100 steps.")
    if found.random_transfer:
        lines.append("Both runs started from RANDOM weights (no ImageNet weights here): the sweep read a random "
                     "network's loss, so its suggestion says nothing about the rate the real recipe wants, and one run "
                     "each is no evidence that it trains better. With the ImageNet weights, run this cell again: the sweep then "
                     "reads the real recipe's loss.")
    return lines


def describe_tta(table: pd.DataFrame) -> list[str]:
    """Notebook 06's flip test-time augmentation, per run (rows of ``table``: test images, predictions changed,
    change (points)): how many answers the mirror changed, and whether the change is more than one test image."""
    lines = []
    for init, row in table.iterrows():
        images, changed, points = int(row["test images"]), int(row["predictions changed"]), float(row["change (points)"])
        if changed == 0:
            lines.append(f"{init}: the mirrored images changed none of the {images} answers, so accuracy cannot move.")
            continue
        one = 100 / images
        verdict = (f"within one test image ({one:.1f} points): no measurable effect" if abs(points) <= one + 1e-9
                   else "it helped here" if points > 0 else "it hurt here")
        lines.append(f"{init}: the mirrored images changed {changed} of the {images} answers; accuracy {points:+.1f} "
                     f"points, {verdict}.")
    return lines
