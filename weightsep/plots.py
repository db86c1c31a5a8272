"""Plots of a separated state, saved as PNG files (matplotlib's Agg canvas, never a window).

Each ``plot_*`` function takes the store (or a session, where it must run a
network) and an output path, draws one figure and returns a ``Plot``: the path
written and the arrays it drew, so tests can check the data against an
independent computation.  The data behind each figure comes from a small pure
function (``occupation_by_task``, ``exclusive_by_task``, ``page_contribution``,
``sharing_cost``, ...) that tests call directly too.

One function per plot mode of WeightSeparation.py (``separated_fisher_per_page`` ...,
at the end) names the file and calls the figure:

    pf       Fisher per page of the separated task, recomputed on its materialized
             weights (same K examples and seed as at add), exclusive pages highlighted
    pw       mean |w| per page of the separated task's materialized weights
    pnf      Fisher per page of the task's network (the Fisher stored at add)
    pnw      mean |w| per page of the task's network weights (stored at add)
    pnfh     histogram of the network Fisher values (log10, nonzero values)
    pnwh     histogram of the network weight values
    heatmap  the sharing cost of task a against task b, network weights and Fisher.  By default
             as the original drew it (``plot_original_heatmap``): the weight vectors cut into
             chunks of 100 weights, the first min(n_a, n_b) // 100 chunks of each, cost
             sum (w_a - w_b)^2 (F_a + F_b) with no element left out, a's chunks on the x axis and
             b's on the y axis from the bottom, blue shades on a log scale from the smallest to
             the largest cost.  ``-heatmap=pages`` (ours, ``plot_sharing_cost``): the state's
             pages, the matching's cost (elements where a Fisher is zero count zero), every page,
             pairs that share a shared page marked.  Cells of zero cost (a log scale has no
             place for them; the original's LogNorm from a zero minimum fails) are drawn in one
             colour outside the colour scale and counted in the legend.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, ever: figures are only saved

import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from weightsep import atomic, matching, separation  # noqa: E402
from weightsep.errors import WeightSepError, formation_hint  # noqa: E402
from weightsep.pages import occupation_counts, to_pages  # noqa: E402
from weightsep.store import Store  # noqa: E402

DPI = 100
WIDE = (11.0, 4.8)       # inches: 1100 x 480 pixels at DPI
SQUARE = (8.0, 7.0)      # the heatmap
SHARED_COLOR = "#8c8c8c"
EXCLUSIVE_COLOR = "#e6550d"
NETWORK_COLOR = "#3182bd"
# Zero-cost heatmap cells: a colour neither colour scale uses (Blues runs white to navy, viridis
# purple to yellow), so that they never pass for the lowest or the highest costs.
ZERO_COST_COLOR = "#ff33cc"
ORIGINAL_HEATMAP = (8.0, 4.5)  # the original's figure size
ORIGINAL_CHUNK = 100           # the original's heatmap "pages": 100 weights, whatever the page size
SEPARATED_COLOR = "#e6550d"


@dataclasses.dataclass
class Plot:
    """A written figure and the arrays it shows."""

    path: Path
    data: dict


def _figure(size=WIDE) -> Figure:
    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    created = not path.parent.exists()
    atomic.ensure_dir(path.parent)
    try:
        atomic.atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png"))  # no half-written PNG
    except WeightSepError:
        if created:  # a failed plot leaves no empty folder behind
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise
    return path


def _tasks(store: Store) -> list:
    if not store.tasks:
        raise WeightSepError(f"the state in {store.dir} holds no tasks; add them with {formation_hint(store.dir)}")
    return store.tasks


# --- data ---------------------------------------------------------------------------

def accuracy_by_task(store: Store) -> dict:
    """Per task: network and separated test accuracy (NaN where not measured yet)."""
    records = _tasks(store)
    get = lambda rec, key: float(rec.accuracy[key]) if isinstance(rec.accuracy.get(key), float) else np.nan  # noqa: E731
    return {"tasks": [r.name for r in records],
            "network": np.array([get(r, "network") for r in records]),
            "separated": np.array([get(r, "separated") for r in records])}


def occupation_by_task(store: Store) -> dict:
    """int64 [tasks, P]: 1 where a task has a page on shared page q (a task uses a page at most once)."""
    records = _tasks(store)
    counts = np.array([occupation_counts({r.name: r.page_table}, store.num_pages) for r in records], np.int64)
    return {"tasks": [r.name for r in records], "counts": counts}


def exclusive_by_task(store: Store) -> dict:
    records = _tasks(store)
    exclusive = np.array([len(r.exclusive_pages) for r in records], np.int64)
    pages = np.array([r.num_pages for r in records], np.int64)
    return {"tasks": [r.name for r in records], "exclusive": exclusive, "sharable": pages - exclusive}


def page_contribution(fisher: np.ndarray, page_size: int) -> np.ndarray:
    """Contribution density per page (the separation's ranking), float64 [n_p]."""
    return separation.contribution_density(fisher, page_size)


def page_mean_abs(weights: np.ndarray, page_size: int, num_weights: int) -> np.ndarray:
    """Mean |w| over the real weights of each page (the last page's padding excluded)."""
    pages = np.abs(to_pages(weights, page_size).astype(np.float64))
    real = np.full(len(pages), page_size, np.float64)
    real[-1] = num_weights - page_size * (len(pages) - 1)
    return pages.sum(axis=1) / real


def sharing_cost(store: Store, a: str, b: str) -> dict:
    """Overlapping cost of every page of a (rows) against every page of b (columns).

    Cost(i, j) = sum over elements with both Fisher values nonzero of
    (F_a + F_b) (w_a - w_b)^2, with the tasks' network weights and network Fisher:
    the cost of overlapping a's page i and b's page j on one shared page.  ``pairs``
    lists the (i, j) that do share a shared page in the state.
    """
    if a == b:
        raise WeightSepError(f"the heatmap needs two different tasks, got {a},{b}")
    S, P = store.page_size, store.num_pages
    ra, rb = store.task(a), store.task(b)
    wa, fa = (to_pages(store.load_vector(a, k), S) for k in ("network_weight", "network_fisher"))
    wb, fb = (to_pages(store.load_vector(b, k), S) for k in ("network_weight", "network_fisher"))
    cost = matching.overlapping_cost_matrix(wa, fa, wb, fb)
    where_b = {int(q): j for j, q in enumerate(rb.page_table) if q < P}
    pairs = np.array([(i, where_b[int(q)]) for i, q in enumerate(ra.page_table) if q < P and int(q) in where_b],
                     np.int64).reshape(-1, 2)
    return {"cost": cost, "pairs": pairs, "exclusive_a": list(ra.exclusive_pages),
            "exclusive_b": list(rb.exclusive_pages)}


def original_sharing_cost(store: Store, a: str, b: str, chunk: int = ORIGINAL_CHUNK) -> dict:
    """The original's heatmap matrix: k = min(n_a // chunk, n_b // chunk) chunks of ``chunk``
    weights of each task's network weights and Fisher; cost[j, i] = sum over the chunk of
    (w_a[i] - w_b[j])^2 (F_a[i] + F_b[j]), every element counted (float64 here)."""
    if a == b:
        raise WeightSepError(f"the heatmap needs two different tasks, got {a},{b}")
    vectors = [[store.load_vector(name, kind).astype(np.float64) for kind in ("network_weight", "network_fisher")]
               for name in (a, b)]
    k = min(len(vectors[0][0]), len(vectors[1][0])) // chunk
    (wa, fa), (wb, fb) = ([v[:k * chunk].reshape(k, chunk) for v in pair] for pair in vectors)
    cost = np.empty((k, k))
    for start in range(0, k, 16):  # blocks of b's chunks bound the temporaries
        rows = slice(start, min(k, start + 16))
        cost[rows] = np.sum(np.square(wa[None] - wb[rows, None]) * (fa[None] + fb[rows, None]), axis=2)
    return {"cost": cost, "chunk": chunk}


def _zero_cells(ax, cost, origin: str) -> int:
    """Draw the cells of zero cost in ZERO_COST_COLOR (above the masked colour image); their number."""
    zero = cost <= 0
    if np.any(zero):
        overlay = np.ma.masked_where(~zero, np.ones_like(cost))
        ax.imshow(overlay, cmap=ListedColormap([ZERO_COST_COLOR]), aspect="auto",
                  interpolation="nearest", origin=origin)
    return int(np.sum(zero))


def _log_image(ax, cost: np.ndarray, cmap: str, origin: str):
    """The positive costs on a log colour scale; zero cells left blank (drawn over by the caller)."""
    positive = cost[cost > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if len(positive) else None
    return ax.imshow(np.ma.masked_less_equal(cost, 0), cmap=matplotlib.colormaps[cmap], norm=norm,
                     aspect="auto", interpolation="nearest", origin=origin)


def plot_original_heatmap(store: Store, a: str, b: str, path) -> Plot:
    """The original's sharing-cost heatmap (module doc): a's chunks across, b's up from the bottom."""
    data = original_sharing_cost(store, a, b)
    cost = data["cost"]
    fig = _figure(ORIGINAL_HEATMAP)
    ax = fig.add_subplot()
    image = _log_image(ax, cost, "Blues", origin="lower")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("sharing cost (log scale)")
    ticks = np.arange(0, cost.shape[0], 100)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel(f"{a}: chunk of {data['chunk']} weights")
    ax.set_ylabel(f"{b}: chunk of {data['chunk']} weights")
    zeros = data["zero_cells"] = _zero_cells(ax, cost, "lower")
    if zeros:
        ax.legend(handles=[Patch(color=ZERO_COST_COLOR, label=f"zero cost ({zeros} cell{'s' * (zeros != 1)})")],
                  loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=9)
    ax.set_title(f"Sharing cost {a} x {b}: sum (w_a - w_b)^2 (F_a + F_b) per {data['chunk']} weights")
    return Plot(_save(fig, path), data)


# --- figures ------------------------------------------------------------------------

def plot_accuracy(store: Store, path) -> Plot:
    """Grouped bars per task: network vs separated test accuracy, the difference written above."""
    data = accuracy_by_task(store)
    names, net, sep = data["tasks"], 100 * data["network"], 100 * data["separated"]
    x = np.arange(len(names))
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(x - 0.2, net, 0.4, label="network (before separation)", color=NETWORK_COLOR)
    ax.bar(x + 0.2, sep, 0.4, label="separated (after)", color=SEPARATED_COLOR)
    for i in range(len(names)):
        if np.isfinite(net[i]) and np.isfinite(sep[i]):
            diff = sep[i] - net[i]
            ax.annotate(f"{diff:+.1f}", (x[i], max(net[i], sep[i])), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9, color="#b30000" if diff < 0 else "#006d2c")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 110)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("task")
    diffs = sep - net
    mean = np.nanmean(diffs) if np.isfinite(diffs).any() else np.nan
    ax.set_title(f"Accuracy before and after weight separation (difference in points above the bars; "
                 f"mean {mean:+.2f})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return Plot(_save(fig, path), data)


def plot_occupation(store: Store, path) -> Plot:
    """Per shared page, how many tasks sit on it, stacked by task; plus a histogram of the counts."""
    data = occupation_by_task(store)
    counts = data["counts"]
    total = counts.sum(axis=0)
    data["total"] = total
    P = store.num_pages
    fig = _figure((12.0, 5.0))
    grid = fig.add_gridspec(1, 2, width_ratios=[4, 1])
    ax = fig.add_subplot(grid[0])
    colors = matplotlib.colormaps["tab10" if len(counts) <= 10 else "tab20"]
    bottom = np.zeros(P)
    for row, name in enumerate(data["tasks"]):
        ax.bar(np.arange(P), counts[row], 1.0, bottom=bottom, label=name, color=colors(row % colors.N),
               edgecolor="none")
        bottom += counts[row]
    ax.set_xlim(-0.5, P - 0.5)
    ax.set_xlabel("shared page")
    ax.set_ylabel("tasks on the page")
    ax.set_title(f"Occupation of the shared pool ({P} pages x {store.page_size} weights)")
    ax.legend(ncols=min(5, len(counts)), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    ax.set_ylim(0, max(1, total.max()) * 1.05)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist = fig.add_subplot(grid[1])
    levels = np.arange(int(total.max()) + 1)
    hist_counts = np.bincount(total, minlength=len(levels))
    data["histogram"] = hist_counts
    hist.barh(levels, hist_counts, color=SHARED_COLOR)
    for level, num in zip(levels, hist_counts):
        if num:
            hist.annotate(str(num), (num, level), xytext=(2, 0), textcoords="offset points", va="center", fontsize=8)
    hist.set_xlabel("shared pages")
    hist.set_ylabel("tasks on the page")
    hist.set_title("pages by occupants")
    hist.set_ylim(-0.5, levels[-1] + 0.5)
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    return Plot(_save(fig, path), data)


def plot_exclusive(store: Store, path) -> Plot:
    """Per task: its pages split into sharable (on the pool) and exclusive (level-2)."""
    data = exclusive_by_task(store)
    x = np.arange(len(data["tasks"]))
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(x, data["sharable"], 0.6, label="sharable pages (on the shared pool)", color=SHARED_COLOR)
    ax.bar(x, data["exclusive"], 0.6, bottom=data["sharable"], label="exclusive pages", color=EXCLUSIVE_COLOR)
    for i, (s, e) in enumerate(zip(data["sharable"], data["exclusive"])):
        ax.annotate(str(e), (x[i], s + e), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=9)
    ax.set_xticks(x, data["tasks"])
    ax.set_xlabel("task")
    ax.set_ylabel("weight-pages")
    ax.set_ylim(0, (data["sharable"] + data["exclusive"]).max() * 1.15)
    ax.set_title(f"Exclusive pages per task (number above the bar; {int(data['exclusive'].sum())} in all, "
                 f"pages of {store.page_size} weights)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    return Plot(_save(fig, path), data)


def _page_bars(path, values, exclusive, title, ylabel, log=False) -> Figure:
    values = np.asarray(values, np.float64)
    colors = np.full(len(values), SHARED_COLOR, dtype=object)
    colors[list(exclusive)] = EXCLUSIVE_COLOR
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(np.arange(len(values)), values, 1.0, color=list(colors), edgecolor="none")
    handles = [Patch(color=SHARED_COLOR, label="sharable page"),
               Patch(color=EXCLUSIVE_COLOR, label=f"exclusive page ({len(exclusive)})")]
    if log:
        positive = values[values > 0]
        ax.set_yscale("log")
        if len(positive):
            ax.set_ylim(positive.min() / 2, positive.max() * 2)
        zero = len(values) - len(positive)
        if zero:  # a log axis cannot draw them: say so rather than leave a silent gap
            title += f" ({zero} page{'s' if zero > 1 else ''} of zero not drawn)"
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel("page of the task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # Below the axes: inside, the legend would hide the tallest bars (often the exclusive pages).
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    _save(fig, path)
    return fig


def plot_page_fisher(store: Store, name: str, path, fisher: np.ndarray | None = None, label: str = "network") -> Plot:
    """Contribution density per page of a task (log scale); exclusive pages in another colour.

    ``fisher`` defaults to the network Fisher stored at add; pass another vector (e.g.
    recomputed on the separated weights) with a ``label`` saying what it is.
    """
    rec = store.task(name)
    if fisher is None:
        fisher = store.load_vector(name, "network_fisher")
    cd = page_contribution(fisher, store.page_size)
    on_exclusive = float(cd[rec.exclusive_pages].sum())
    _page_bars(path, cd, rec.exclusive_pages,
               f"{name}: Fisher per page ({label}); exclusive pages hold {100 * on_exclusive:.1f}% of it",
               "contribution density (share of Fisher)", log=True)
    return Plot(Path(path), {"contribution": cd, "exclusive": list(rec.exclusive_pages)})


def plot_page_weights(store: Store, name: str, path, weights: np.ndarray | None = None,
                      label: str = "network") -> Plot:
    """Mean |w| per page of a task; exclusive pages in another colour."""
    rec = store.task(name)
    if weights is None:
        weights = store.load_vector(name, "network_weight")
    values = page_mean_abs(weights, store.page_size, rec.num_weights)
    _page_bars(path, values, rec.exclusive_pages, f"{name}: mean |w| per page ({label} weights)",
               "mean |w| over the page")
    return Plot(Path(path), {"mean_abs": values, "exclusive": list(rec.exclusive_pages)})


def plot_histogram(store: Store, name: str, path, kind: str = "fisher", bins: int = 60) -> Plot:
    """Histogram of a task's network Fisher (log10 of the nonzero values) or network weights."""
    if kind not in ("fisher", "weight"):
        raise ValueError(f"kind must be 'fisher' or 'weight', not {kind!r}")
    values = store.load_vector(name, f"network_{kind}").astype(np.float64)
    if kind == "fisher":
        nonzero = values[values > 0]
        shown, xlabel = np.log10(nonzero), "log10 Fisher information (min-max normalized; nonzero values)"
        zero = len(values) - len(nonzero)
        note = f"{zero} zero value{'' if zero == 1 else 's'} not shown"
    else:
        shown, xlabel, note = values, "weight value", f"mean {values.mean():+.4f}, std {values.std():.4f}"
    counts, edges = np.histogram(shown, bins=bins)
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, np.diff(edges), align="edge", color=NETWORK_COLOR, edgecolor="white", linewidth=0.3)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("weights (log scale)")
    ax.set_title(f"{name}: network {kind} histogram, {len(values)} weights ({note})")
    _save(fig, path)
    return Plot(Path(path), {"counts": counts, "edges": edges})


def plot_sharing_cost(store: Store, a: str, b: str, path) -> Plot:
    """Heatmap of the overlapping cost between a's pages and b's pages; shared pairs marked."""
    data = sharing_cost(store, a, b)
    cost = data["cost"]
    fig = _figure(SQUARE)
    ax = fig.add_subplot()
    image = _log_image(ax, cost, "viridis", origin="upper")
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label("overlapping cost, log scale: sum (F_a + F_b)(w_a - w_b)^2")
    zeros = data["zero_cells"] = _zero_cells(ax, cost, "upper")
    pairs = data["pairs"]
    handles = []
    if len(pairs):
        handles.append(ax.scatter(pairs[:, 1], pairs[:, 0], s=6, c="red", marker="s", linewidths=0,
                                  label=f"pages on the same shared page ({len(pairs)})"))
    if zeros:
        handles.append(Patch(color=ZERO_COST_COLOR, label=f"zero cost: a Fisher is zero ({zeros} cell{'s' * (zeros != 1)})"))
    ax.set_xlabel(f"page of {b} ({cost.shape[1]} pages)")
    ax.set_ylabel(f"page of {a} ({cost.shape[0]} pages)")
    total = float(cost[pairs[:, 0], pairs[:, 1]].sum()) if len(pairs) else 0.0
    ax.set_title(f"Sharing cost {a} x {b} (network weights and Fisher)\n"
                 f"cost of the pairs sharing a page: {total:.4g}")
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=9)
    data["shared_cost"] = total
    return Plot(_save(fig, path), data)


# --- the CLI plot modes: one function each, writing <plot_dir>/<mode>_<task>.png ----------

def separated_fisher_per_page(session, name: str, plot_dir) -> Plot:
    """-mode=pf: Fisher per page of the separated task, recomputed on its materialized weights."""
    from weightsep.diagnostics import separated_fisher  # runs the network: TensorFlow
    return plot_page_fisher(session.store, name, Path(plot_dir) / f"pf_{name}.png", separated_fisher(session, name),
                            label="separated weights")


def separated_weights_per_page(store: Store, name: str, plot_dir) -> Plot:
    """-mode=pw: mean |w| per page of the separated task's materialized weights."""
    return plot_page_weights(store, name, Path(plot_dir) / f"pw_{name}.png", store.materialize(name),
                             label="separated")


def network_fisher_per_page(store: Store, name: str, plot_dir) -> Plot:
    """-mode=pnf: Fisher per page of the task's network (the Fisher stored at add)."""
    return plot_page_fisher(store, name, Path(plot_dir) / f"pnf_{name}.png")


def network_weights_per_page(store: Store, name: str, plot_dir) -> Plot:
    """-mode=pnw: mean |w| per page of the task's network weights (stored at add)."""
    return plot_page_weights(store, name, Path(plot_dir) / f"pnw_{name}.png")


def network_fisher_histogram(store: Store, name: str, plot_dir) -> Plot:
    """-mode=pnfh: histogram of the network Fisher values (log10 of the nonzero ones)."""
    return plot_histogram(store, name, Path(plot_dir) / f"pnfh_{name}.png", "fisher")


def network_weights_histogram(store: Store, name: str, plot_dir) -> Plot:
    """-mode=pnwh: histogram of the network weight values."""
    return plot_histogram(store, name, Path(plot_dir) / f"pnwh_{name}.png", "weight")


HEATMAPS = ("original", "pages")


def sharing_cost_heatmap(store: Store, a: str, b: str, plot_dir, heatmap: str = "original") -> Plot:
    """-mode=heatmap: the sharing cost of a against b, as the original drew it (chunks of 100
    weights), or with heatmap="pages" per page of the state (the matching's cost, shared pairs marked)."""
    if heatmap not in HEATMAPS:
        raise WeightSepError(f"-heatmap must be one of {', '.join(HEATMAPS)}, not {heatmap!r}")
    path = Path(plot_dir) / f"heatmap_{a}_{b}.png"
    if heatmap == "pages":
        return plot_sharing_cost(store, a, b, path)
    return plot_original_heatmap(store, a, b, path)
