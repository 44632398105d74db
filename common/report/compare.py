"""Training jobs of one family side by side: the headline metrics with their differences from
the first job, the family's curves overlaid (CED, SDR, Dice), and a paired test on the
per-image figures of the shared test split (Wilcoxon signed-rank, SciPy). The submit check
(``plan.py``) has refused jobs whose test splits differ."""

from __future__ import annotations

from medq.common.report import plots, stats
from medq.common.report.data import JobData
from medq.common.report.page import Cell, Curve, CurvePlot, Note, Section, Table


def _spec_difference(jobs: list[JobData]) -> Table | None:
    specs = [j.job["spec"] or {} for j in jobs]
    keys = sorted({k for s in specs for k in s if len({repr(x.get(k)) for x in specs}) > 1})
    if not keys:
        return None
    return Table.of("What differs between the specs", ("field", *(j.id for j in jobs)),
                    [(k, *(repr(s.get(k)) if isinstance(s.get(k), (dict, list)) else s.get(k) for s in specs))
                     for k in keys])


def headline_table(kind, jobs: list[JobData]) -> Table:
    metrics = [kind.report_headline(j.results) for j in jobs]
    first = metrics[0]
    columns = ["metric", *(j.id for j in jobs), *(f"{j.id} − {jobs[0].id}" for j in jobs[1:])]
    rows = []
    for i, metric in enumerate(first):
        values = [m[i] if i < len(m) else None for m in metrics]
        cells = [Cell(metric.label)]
        cells += [Cell(v.value if v else None, metric.digits, v.path if v else None, j.id) for v, j in zip(values, jobs)]
        for v in values[1:]:
            diff = None if v is None or v.value is None or metric.value is None else v.value - metric.value
            better = diff is not None and diff != 0 and ((diff < 0) == metric.lower_is_better)
            cells.append(Cell(diff, metric.digits, bold=better))
        rows.append(tuple(cells))
    return Table("Headline metrics on the shared test split", tuple(columns), tuple(rows),
                 note="Differences are each job minus the first; bold: better than the first "
                      "(lower errors, higher Dice / SDR).")


def paired_tests(kind, jobs: list[JobData]) -> Table | Note:
    errors = [kind.report_errors(j.results) for j in jobs]
    if any(e is None or not e.values for e in errors):
        return Note("No paired test: a job has no per-image test figures (its evaluation has not run yet).", "warn")
    base = errors[0]
    rows = []
    for data, other in zip(jobs[1:], errors[1:]):
        keys = sorted(set(base.values) & set(other.values))
        a = [base.values[k] for k in keys]
        b = [other.values[k] for k in keys]
        test = stats.wilcoxon_paired(a, b)
        mean_a, mean_b = stats.mean_sd(a)[0], stats.mean_sd(b)[0]
        if test.p_value is None:
            reading = "no image differs" if test.n and not test.n_changed else "–"
        else:
            better = test.direction != 0 and (test.direction < 0) == base.lower_is_better
            reading = (f"{data.id} {'better' if better else 'worse'}" if test.direction else "no shift either way")
            reading += " (p < 0.05)" if test.p_value < 0.05 else "; not significant at 0.05"
        rows.append((Cell(f"{data.id} vs {jobs[0].id}"), Cell(test.n), Cell(test.n_changed), Cell(mean_a, 3),
                     Cell(mean_b, 3), Cell(None if mean_a is None or mean_b is None else mean_b - mean_a, 3),
                     Cell(test.median_difference, 3), Cell(test.statistic, 1), Cell(test.p_value, 4), Cell(reading)))
    return Table(f"Paired test: {base.label}",
                 ("comparison", "n", "n differing", "mean (first)", "mean (other)", "mean difference",
                  "median difference", "W", "p", "reading"), tuple(rows),
                 note="Wilcoxon signed-rank test, two-sided, on the per-image figures of the images both jobs "
                      "evaluated (scipy.stats.wilcoxon); differences are other − first, per image. Images whose values do "
                      "not differ are left out of the ranks (n differing is what the test ranks). The reading follows "
                      "the test: which way the ranked differences lean (R+ against R−), which can differ from the "
                      "difference of the means when a few images differ a lot.")


def overlaid_curves(kind, jobs: list[JobData]) -> list:
    figures = []
    per_job = [kind.report_curves(j.results) for j in jobs]
    if not per_job or any(p is None for p in per_job):
        return figures
    for i, plot in enumerate(per_job[0]):
        lines = []
        for data, plots_of_job in zip(jobs, per_job):
            if i < len(plots_of_job):
                lines += [Curve(f"{data.id}" + (f" {c.label}" if c.label else ""), c.x, c.y)
                          for c in plots_of_job[i].curves]
        figures.append(plots.curves(CurvePlot(plot.title, plot.xlabel, plot.ylabel, tuple(lines), plot.caption)))
    return figures


def compare_sections(kind, jobs: list[JobData]) -> list[Section]:
    return [Section.of("Side by side", [headline_table(kind, jobs), paired_tests(kind, jobs),
                                        *overlaid_curves(kind, jobs), _spec_difference(jobs)])]
