"""Issue 37, part 2: which advantage estimator assigns credit to the steps that made progress? Advantages of
step-GAE, token-GAE, Monte-Carlo return minus a baseline, GRPO and GiGPO, scored against ground-truth step labels.

Stages per task (each skipped when its output exists, so the script resumes after an interruption):

1. ``record``   - ``steppo rollout`` of the task's SFT warm start at temperature 1 on the train pool / split with
                  ``step_labels=true`` (``info["step_label"]``: 1 when the step made progress), ``task_seeds`` tasks x
                  groups of ``group_size`` samples (GRPO and GiGPO need the groups) -> ``WORK/<task>/rollout.jsonl``;
2. ``features`` - one no-grad fp32 forward of the warm start's base transformer (``AutoModel``, what
                  ``steppo_train.models.load_critic`` loads) per step row over its recorded ``prompt_ids +
                  response_ids``; keeps the final hidden state at the last prompt token (the step critic's input) and
                  at every position ``P - 1 + j`` where action token ``j`` is chosen (the token critic's input)
                  -> ``WORK/<task>/features.pt``;
3. ``score``    - cross-fitting: ``folds`` folds of whole task groups; per critic seed and discount, a linear value
                  head on standardized frozen features (the step critic and the token critic) is fitted to the
                  Monte-Carlo returns-to-go of the training folds and predicts the held-out fold. Every estimator's
                  per-step advantage on the held-out episodes is scored against the labels: ROC AUC and Spearman
                  correlation, 95% percentile bootstrap over task groups, spread over critic seeds, and each critic's
                  held-out explained variance -> ``RESULTS/<task>.json`` (small, committed).

Full critics (a fine-tuned transformer per fold x seed) do not fit a 2-core CPU: the value heads here are linear
heads on cached frozen features of the warm-start model (one forward per step row), i.e. a critic whose backbone is
frozen at the warm start. ``python experiments/credit_report.py`` rebuilds the docs section and the plot from the
result files alone.

Estimators (``steppo_train.advantages``; no whitening; truncated episodes closed with ``V = 0`` as in the trainer):
step-GAE (step values); token-GAE (token values, rewards on each step's last action token), a step's advantage the
mean of its tokens' advantages (primary) or its first token's; MC return-to-go minus the mean return-to-go at the
same step index over the training folds (critic-free; "minus the critic value" would be step-GAE at lambda = 1);
GRPO (group-normalised return on every step); GiGPO (anchors: observation hashes, as ``StepBatch`` computes them).

    python experiments/credit.py                                  # every task, every stage not done yet, report
    python experiments/credit.py --tasks textworld                # one task
    python experiments/credit.py --tasks textworld --record R.jsonl --textworld-warm-start smollm2-135m  # given records
    python experiments/credit.py report                           # only the docs section and the plot
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from horizon import Horizon  # experiments/ is on sys.path when this file runs as a script
from multihop import ENV_ID as MULTIHOP_ENV
from multihop import MultiHop
from textworld_cpu import STEPPO, _env_args, _run
from torch import Tensor

from steppo_agent.records import Trajectory
from steppo_agent.trajectory_io import read_trajectories
from steppo_train import advantages as adv
from steppo_train.batch import StepBatch, build_step_batch
from steppo_train.diagnostics import explained_variance  # the trainer's own metric, 1 - Var(R - V) / Var(R)
from steppo_train.targets import token_layout

ROOT = Path(__file__).resolve().parents[1]
TRUNCATED_BOOTSTRAP = "zero"  # the trainer's default (TrainConfig.truncated_bootstrap)
#: estimator name -> (uses the critics, depends on gamma, depends on lambda)
ESTIMATORS: dict[str, tuple[bool, bool, bool]] = {
    "step-GAE": (True, True, True),
    "token-GAE (mean)": (True, True, True),
    "token-GAE (first token)": (True, True, True),
    "MC - baseline": (False, True, False),
    "GRPO": (False, False, False),
    "GiGPO": (False, True, False),
}


class CreditError(Exception):
    """A bad invocation or a missing input: printed as one ``steppo: error: ...`` line (exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Credit:
    """Every knob of the benchmark (the same for every task)."""

    task_seeds: int = 75
    group_size: int = 4
    temperature: float = 1.0
    folds: int = 5
    fold_seed: int = 0
    critic_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    gammas: tuple[float, ...] = (1.0, 0.99)
    lams: tuple[float, ...] = (1.0, 0.95)
    #: the value heads (:func:`fit_linear_head`). Chosen on the step features of 16 expert episodes of the TextWorld
    #: task (smollm2-135m, 4-fold, targets 0.99^steps-to-go): held-out EV 0.81, closed-form ridge's best 0.82; Adam
    #: lr 1e-2 gave 0.72-0.75, 1000 steps 0.78 (overfitting on 120 training rows)
    head_steps: int = 400
    head_lr: float = 1e-3
    head_batch: int = 256
    head_l2: float = 1e-2
    head_init_std: float = 1e-3
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    token_budget: int = 8192


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: the env of its RL experiment, on training tasks, with step labels."""

    name: str
    env_id: str
    env: dict
    max_tokens: int
    first_seed: int
    warm_start: Path
    build: str


def tasks(horizon_work: Path, multihop_work: Path) -> dict[str, Task]:
    """TextWorld: ``experiments/horizon.py``'s env on its RL train pool, games from ``train_pool`` on (the SFT expert
    records played games ``0 .. train_pool - 1``). MultiHopQA: ``experiments/multihop.py``'s env on the train split.
    The warm-start paths are where those scripts' ``sft_stage`` puts the last SFT checkpoint."""
    h, m = Horizon(), MultiHop()
    return {
        "textworld": Task("textworld", "steppo/TextWorld-v0",
                          {**h.env, "pool": "train", "pool_size": h.rl_pool, "draw": "cycle", "step_labels": True},
                          h.max_tokens, h.train_pool, _sft_final(horizon_work, h.sft_iterations),
                          "python experiments/horizon.py --only-warm-start"),
        "multihop": Task("multihop", MULTIHOP_ENV, {**m.env, "split": "train", "step_labels": True}, m.max_tokens,
                         m.oracle_episodes, _sft_final(multihop_work, m.sft_iterations),
                         "python experiments/multihop.py --only-warm-start"),
    }


def _sft_final(work: Path, iterations: int) -> Path:
    return work / "sft" / "checkpoints" / f"iter_{iterations - 1:06d}" / "actor"


# -- the maths: small pure functions ---------------------------------------------------------------------------


def rank_stats(scores: Tensor, labels: Tensor, groups: Tensor | None = None, counts: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Mann-Whitney ROC AUC and Spearman correlation of ``scores`` against 0/1 ``labels``, per row of ``counts``.

    Item ``i`` (of group ``groups[i]``, dense ``0 .. G-1``; default: one group) counts ``w_i = counts[r, groups[i]]``
    times in replicate ``r`` (``counts`` ``[R, G]``, e.g. bootstrap draws of whole groups; default one row of ones):

    * ``AUC = sum_{i: y=1} sum_{j: y=0} w_i w_j k(s_i, s_j) / (W_1 W_0)`` with ``k = 1[s_i > s_j] + 1/2 1[s_i = s_j]``
      (ties count 1/2); the double sum is ``c^T M c`` with ``M[g, h]`` the same sum over the items of groups ``g``, ``h``;
    * Spearman's rho = the Pearson correlation of the scores' midranks ``r`` with the labels (the labels' midranks are
      an affine map of them): ``rho = (m_1 - m_0) sqrt(p (1 - p) / Var(r))`` with ``m_y`` the mean midrank of class
      ``y``, ``p = W_1 / W`` and the tie-corrected ``Var(r) = (W^2 - 1) / 12 - sum_u (t_u^3 - t_u) / (12 W)`` (``t_u``:
      the weight at distinct score ``u``); ``sum_{y=1} w_i r_i = c^T A c + W_1 / 2``, ``A[g, h] = sum_{i in g, y_i = 1}
      sum_{j in h} k(s_i, s_j)``.

    Both equal the unweighted statistics of the data with each item repeated ``w_i`` times; NaN where a replicate has no
    positive, no negative or only tied scores. Returns ``(auc [R], rho [R])``.
    """
    s = scores.detach().double().reshape(-1)
    y = labels.reshape(-1).bool()
    g = torch.zeros(s.numel(), dtype=torch.int64) if groups is None else groups.reshape(-1)
    c = torch.ones(1, int(g.max()) + 1, dtype=torch.float64) if counts is None else counts.double()
    values, inv = torch.unique(s, return_inverse=True)  # ascending
    size = (c.shape[1], values.numel())
    flat = g * values.numel() + inv
    pos = torch.zeros(size[0] * size[1], dtype=torch.float64).index_add_(0, flat[y], torch.ones(int(y.sum()), dtype=torch.float64)).reshape(size)
    tot = torch.zeros(size[0] * size[1], dtype=torch.float64).index_add_(0, flat, torch.ones_like(s)).reshape(size)
    neg = tot - pos
    w1, w0 = c @ pos.sum(1), c @ neg.sum(1)
    w = w1 + w0
    auc = ((c @ (pos @ (neg.cumsum(1) - neg / 2).T)) * c).sum(1) / (w1 * w0)
    s1 = ((c @ (pos @ (tot.cumsum(1) - tot / 2).T)) * c).sum(1) + w1 / 2
    s0 = w * (w + 1) / 2 - s1
    t = c @ tot
    var = (w**2 - 1) / 12 - (t**3 - t).sum(1) / (12 * w)
    p = w1 / w
    rho = (s1 / w1 - s0 / w0) * (p * (1 - p) / var).sqrt()
    return auc, rho


def auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC of ``scores`` for 0/1 ``labels`` (Mann-Whitney, ties 1/2): :func:`rank_stats` unweighted."""
    return float(rank_stats(scores, labels)[0][0])


def fold_assignment(task_seeds: Tensor, folds: int, seed: int) -> Tensor:
    """Cross-fitting folds of whole task groups: ``fold[b] = rank(task_seeds[b]) % folds`` where ``rank`` is the
    position of the episode's task seed in a permutation of the distinct seeds drawn by ``torch.Generator(seed)``.
    All samples of one task share a fold; fold sizes differ by at most one task. ``[B]`` int64."""
    distinct, inv = torch.unique(task_seeds, return_inverse=True)
    if distinct.numel() < folds:
        raise CreditError(f"{distinct.numel()} task seeds cannot fill {folds} folds: record more tasks or lower --folds.")
    order = torch.randperm(distinct.numel(), generator=torch.Generator().manual_seed(seed))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(distinct.numel())
    return rank[inv] % folds


def bootstrap_counts(n_groups: int, replicates: int, seed: int) -> Tensor:
    """Percentile-bootstrap draws of whole groups (task seeds): replicate ``r`` draws ``n_groups`` groups uniformly
    with replacement with ``torch.Generator(seed)``; ``counts[r, g]`` is how often group ``g`` was drawn (the weight
    of each of its items, see :func:`rank_stats`). ``[replicates, n_groups]``, each row summing to ``n_groups``."""
    draws = torch.randint(n_groups, (replicates, n_groups), generator=torch.Generator().manual_seed(seed))
    return torch.zeros(replicates, n_groups).scatter_add_(1, draws, torch.ones(replicates, n_groups))


def fit_linear_head(x: Tensor, y: Tensor, *, seed: int, steps: int, lr: float, batch: int, l2: float,
                    init_std: float = 1e-3) -> tuple[Tensor, Tensor]:
    """A linear value head ``V(x) = x w + b`` fitted by Adam on mini-batches: ``steps`` steps of ``batch`` rows drawn
    with replacement by ``torch.Generator(seed)``, loss ``mean((V(x) - y)^2) + l2 |w|^2``.

    Gradients in closed form: ``g_w = 2 X^T e / n + 2 l2 w``, ``g_b = 2 mean(e)`` with ``e = X w + b - y``; Adam
    (``beta = (0.9, 0.999)``, ``eps = 1e-8``): ``m <- 0.9 m + 0.1 g``, ``v <- 0.999 v + 0.001 g^2``,
    ``theta <- theta - lr (m / (1 - 0.9^k)) / (sqrt(v / (1 - 0.999^k)) + eps)`` at step ``k``. (No ``torch.optim``:
    its import alone costs seconds.) ``w`` starts at ``N(0, init_std^2)`` from the same generator, ``b`` at
    ``mean(y)``. ``x`` and ``y`` should be standardized (:func:`cross_fit` does it). The default ``init_std`` is a
    tenth of :class:`steppo_train.models.Critic`'s: with 576 standardized, correlated features, ``N(0, 0.01^2)``
    weights start with a prediction noise of about a quarter of the targets' spread, which 400 small Adam steps
    do not undo. Returns ``(w [H], b [1])``."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.cat([torch.randn(x.shape[1], generator=g) * init_std, y.float().mean().reshape(1)])
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    for k in range(1, steps + 1):
        idx = torch.randint(x.shape[0], (min(batch, x.shape[0]),), generator=g)
        xb = x[idx]
        e = xb @ theta[:-1] + theta[-1] - y[idx]
        grad = torch.cat([2 * xb.T @ e / len(idx) + 2 * l2 * theta[:-1], (2 * e.mean()).reshape(1)])
        m.mul_(0.9).add_(grad, alpha=0.1)
        v.mul_(0.999).addcmul_(grad, grad, value=0.001)
        theta -= lr * (m / (1 - 0.9**k)) / ((v / (1 - 0.999**k)).sqrt() + 1e-8)
    return theta[:-1], theta[-1:]


def standardize(x: Tensor, train: Tensor) -> Tensor:
    """``(x - mean) / std`` per feature with the mean and (population) std of the rows ``train`` (std floored at
    1e-6): the held-out rows are scaled by the training folds' statistics only."""
    mean, std = x[train].mean(0), x[train].std(0, unbiased=False).clamp_min(1e-6)
    return (x - mean) / std


def cross_fit(x: Tensor, y: Tensor, fold: Tensor, folds: int, seed: int, c: Credit) -> Tensor:
    """Out-of-fold predictions: for each fold ``k``, a head fitted (:func:`fit_linear_head`, seed ``seed * 1000 +
    k``) on the rows outside ``k`` predicts the rows in ``k``. Features and targets are standardized with the
    training rows' statistics (``V = mu + sd * head(z)``: the fit does not depend on the scale of the returns).
    Every row gets exactly one prediction. ``[N]``."""
    out = torch.zeros(x.shape[0])
    y = y.float()
    for k in range(folds):
        held, train = fold == k, fold != k
        z = standardize(x, train)
        mu, sd = y[train].mean(), y[train].std(unbiased=False).clamp_min(1e-6)
        w, b = fit_linear_head(z[train], (y[train] - mu) / sd, seed=seed * 1000 + k, steps=c.head_steps,
                               lr=c.head_lr, batch=c.head_batch, l2=c.head_l2, init_std=c.head_init_std)
        out[held] = mu + sd * (z[held] @ w + b)
    return out


def step_index_baseline(returns: Tensor, mask: Tensor, use: Tensor) -> Tensor:
    """``b_t = sum_b u_b m_bt G_bt / sum_b u_b m_bt``: the mean return-to-go at step index ``t`` over the trajectories
    with ``use[b]`` (0 where none of them reaches step ``t``). ``[B, T]`` returns and mask, ``[B]`` use -> ``[T]``."""
    m = mask.bool() & use.bool()[:, None]
    n = m.sum(0)
    total = (returns * m).sum(0)
    return torch.where(n > 0, total / n.clamp_min(1), torch.zeros_like(total))


def mc_minus_baseline(returns: Tensor, mask: Tensor, fold: Tensor, folds: int) -> Tensor:
    """Monte-Carlo advantage ``A_bt = G_bt - b^(-k)_t`` with ``b^(-k)`` the :func:`step_index_baseline` over the
    trajectories outside ``b``'s fold ``k = fold[b]`` (critic-free, cross-fitted). Zero outside ``mask``."""
    out = torch.zeros_like(returns)
    for k in range(folds):
        held = fold == k
        out[held] = returns[held] - step_index_baseline(returns, mask, ~held)[None, :]
    return out * mask


def token_to_step(token_adv: Tensor, step_index_of_token: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """A step's token-GAE advantage from its action tokens' advantages ``A_j``: ``(mean_j A_j, A_first)`` per step,
    each ``[B, steps]``. ``step_index_of_token`` is ``[B, L]`` (``-1`` on padding, a step's tokens contiguous, as
    :func:`steppo_train.targets.token_layout` builds it); a step without action tokens gets 0 in both (the
    token-level update gives it no weight)."""
    idx = step_index_of_token
    real = idx >= 0
    flat = torch.arange(idx.shape[0])[:, None] * steps + idx.clamp_min(0)
    prev = torch.cat([idx.new_full((idx.shape[0], 1), -1), idx[:, :-1]], dim=1)
    first = real & (prev != idx)
    zeros = torch.zeros(idx.shape[0] * steps, dtype=token_adv.dtype)
    total = zeros.index_add(0, flat[real], token_adv[real])
    count = zeros.index_add(0, flat[real], torch.ones_like(token_adv[real]))
    firsts = zeros.index_put((flat[first],), token_adv[first])
    mean = torch.where(count > 0, total / count.clamp_min(1), zeros)
    return mean.reshape(-1, steps), firsts.reshape(-1, steps)


def percentile_interval(samples: Tensor, level: float = 0.95) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the non-NaN ``samples`` (linear interpolation)."""
    s = samples.double()
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.nanquantile(s, q).tolist()
    return low, high


# -- data: records and features --------------------------------------------------------------------------------


@dataclasses.dataclass
class CreditData:
    """The step rows of a record file with their labels and cached features.

    ``labels`` ``[rows]`` bool; ``task_seeds`` ``[B]``; ``step_features`` ``[rows, H]`` (last prompt token);
    ``token_features`` ``[tokens, H]``: the action tokens row by row, token by token (the order of the mask
    ``token_layout(batch)[0] >= 0`` read row-major)."""

    batch: StepBatch
    labels: Tensor
    task_seeds: Tensor
    step_features: Tensor
    token_features: Tensor


def load_records(path: Path) -> tuple[list[Trajectory], StepBatch, Tensor, Tensor]:
    """The trajectories of ``path``, their :class:`StepBatch`, the step labels ``[rows]`` (bool, from
    ``Step.info["step_label"]``) and the task seed of each trajectory ``[B]``."""
    if not path.exists():
        raise CreditError(f"no record file {path}: run the record stage (drop --record) or pass an existing file.")
    trajs = read_trajectories(path)
    if not trajs:
        raise CreditError(f"{path} holds no trajectories: record again.")
    labels: list[bool] = []
    for t in trajs:
        for step in t.steps:
            label = step.info.get("step_label")
            if label not in (0, 1, True, False):
                raise CreditError(f"{path}: step {step.index} of {t.id} has no info['step_label'] (0/1): record with "
                                  "--env-arg step_labels=true.")
            labels.append(bool(label))
    batch = build_step_batch(trajs)
    return trajs, batch, torch.tensor(labels), torch.tensor([t.seed for t in trajs], dtype=torch.int64)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, hidden_size: int, prompts: Sequence[Sequence[int]],
                     responses: Sequence[Sequence[int]], token_budget: int) -> tuple[Tensor, Tensor]:
    """Final hidden states (fp32) of one forward per row over ``prompt + response`` (right-padded micro-batches of
    ``steppo_train.models.pack_microbatches``; padding never changes a row's states): at the last prompt token
    ``P - 1`` (``[rows, H]``) and at ``P - 1 + j`` for each action token ``j`` (``[tokens, H]``, row by row)."""
    from steppo_envs.progress import progress_bar
    from steppo_train.models import _right_pad, pack_microbatches  # _right_pad: the trainer's own padding

    lengths = [len(r) for r in responses]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    step = torch.zeros(len(prompts), hidden_size)
    token = torch.zeros(offsets[-1], hidden_size)
    batches = pack_microbatches(list(zip(prompts, responses, strict=True)), token_budget)
    for rows in progress_bar(batches, desc="features", unit="batch"):
        ids, attn = _right_pad([prompts[r] for r in rows], [responses[r] for r in rows], torch.device("cpu"))
        hidden = backbone(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state.float()
        for i, r in enumerate(rows):
            p = len(prompts[r])
            step[r] = hidden[i, p - 1]
            token[offsets[r] : offsets[r + 1]] = hidden[i, p - 1 : p - 1 + lengths[r]]
    return step, token


def stage_features(record: Path, model: str, folder: Path, c: Credit) -> Path:
    """Stage 2: ``folder/features.pt`` from ``record`` and the model at ``model`` (skipped when it exists and was
    computed from the same record file)."""
    out = folder / "features.pt"
    digest = sha256(record)
    if out.exists():
        if torch.load(out, weights_only=True)["record_sha256"] != digest:
            raise CreditError(f"{out} was computed from another record file: delete it to compute it again.")
        return out
    from steppo_train.models import ModelConfig, load_critic

    _, batch, _, _ = load_records(record)
    from steppo_train.precision import resolve_amp

    critic = load_critic(ModelConfig(path=model))  # the base transformer (AutoModel, fp32) and a value head
    amp = resolve_amp("auto")  # bf16 autocast where bf16 is native (~1.7x faster there), else fp32; printed
    t0 = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        step, token = extract_features(critic.backbone.eval(), critic.value_head.in_features, batch.prompt_ids,
                                       batch.response_ids, c.token_budget)
    seconds = time.time() - t0
    print(f"features: {batch.num_rows} rows ({token.shape[0]} action tokens) in {seconds:.1f} s = "
          f"{seconds / batch.num_rows:.3f} s per row (bf16 autocast: {amp})")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"step": step, "token": token, "record_sha256": digest, "model": model, "seconds": seconds,
                "rows": batch.num_rows, "machine": machine(), "bf16_autocast": amp}, tmp)
    tmp.replace(out)
    return out


def load_data(record: Path, features: Path) -> tuple[list[Trajectory], CreditData, dict]:
    """Records, labels and cached features (checked to belong together), and the features file's header."""
    trajs, batch, labels, seeds = load_records(record)
    saved = torch.load(features, weights_only=True)
    if saved["step"].shape[0] != batch.num_rows or saved["token"].shape[0] != sum(len(r) for r in batch.response_ids):
        raise CreditError(f"{features} does not match {record}: delete it to compute it again.")
    header = {k: v for k, v in saved.items() if k not in ("step", "token")}
    return trajs, CreditData(batch, labels, seeds, saved["step"], saved["token"]), header


# -- fit and score ---------------------------------------------------------------------------------------------


def critic_advantages(data: CreditData, fold: Tensor, gamma: float, seed: int, c: Credit
                      ) -> tuple[dict[tuple[str, float], Tensor], float, float]:
    """One critic seed at one discount: cross-fitted step and token value heads (targets: the discounted
    returns-to-go, per step and per action token), then per ``lam`` the held-out step-GAE and token-GAE advantages
    of every row (``{(estimator, lam): [rows]}``), and the two critics' held-out explained variances."""
    b = data.batch
    idx, _ = token_layout(b)
    tmask = idx >= 0
    returns = adv.discounted_returns(b.rewards, b.step_mask, gamma)
    v_step = cross_fit(data.step_features, b.steps_to_rows(returns), fold[b.traj_index], c.folds, seed, c)
    token_rewards = adv.place_step_rewards(b.rewards, idx)
    token_returns = adv.discounted_returns(token_rewards, tmask, gamma)
    v_token = cross_fit(data.token_features, token_returns[tmask], fold[:, None].expand_as(idx)[tmask], c.folds, seed, c)
    values = b.rows_to_steps(v_step)
    token_values = torch.zeros(idx.shape)
    token_values[tmask] = v_token
    ends = {"terminated": b.terminated, "truncated_bootstrap": TRUNCATED_BOOTSTRAP}
    out: dict[tuple[str, float], Tensor] = {}
    for lam in c.lams:
        step_a, _ = adv.step_gae(b.rewards, values, b.step_mask, gamma, lam, **ends)  # type: ignore[arg-type]
        token_a, _ = adv.token_gae(token_rewards, token_values, tmask, gamma, lam, **ends)  # type: ignore[arg-type]
        mean, first = token_to_step(token_a, idx, b.rewards.shape[1])
        out["step-GAE", lam] = b.steps_to_rows(step_a)
        out["token-GAE (mean)", lam] = b.steps_to_rows(mean)
        out["token-GAE (first token)", lam] = b.steps_to_rows(first)
    ev_step = explained_variance(b.steps_to_rows(returns), v_step)
    return out, ev_step, explained_variance(token_returns[tmask], v_token)


def critic_free_advantages(data: CreditData, fold: Tensor, gamma: float, folds: int) -> dict[str, Tensor]:
    """The critic-free estimators that depend on the discount, per row: MC return-to-go minus the cross-fitted
    step-index baseline, and GiGPO (anchors: :class:`StepBatch`'s observation hashes)."""
    b = data.batch
    returns = adv.discounted_returns(b.rewards, b.step_mask, gamma)
    return {
        "MC - baseline": b.steps_to_rows(mc_minus_baseline(returns, b.step_mask, fold, folds)),
        "GiGPO": b.steps_to_rows(adv.gigpo_advantages(b.rewards, b.step_mask, b.group_ids, b.anchor_ids, gamma)),
    }


def grpo_rows(batch: StepBatch) -> Tensor:
    """GRPO's advantage of every row: its trajectory's group-normalised (undiscounted) return."""
    return batch.steps_to_rows(adv.grpo_advantages(batch.returns, batch.group_ids)[:, None].expand_as(batch.rewards))


def summarize(per_seed: Sequence[Tensor], labels: Tensor, groups: Tensor, counts: Tensor) -> dict:
    """AUC and Spearman of each seed's advantages; the table value is their mean over seeds, the interval the
    percentile bootstrap of that mean (each replicate resamples the same task groups for every seed)."""
    point = [rank_stats(s, labels) for s in per_seed]
    boot = [rank_stats(s, labels, groups, counts) for s in per_seed]
    out: dict[str, object] = {}
    for k, name in enumerate(("auc", "spearman")):
        seeds = [float(p[k][0]) for p in point]
        low, high = percentile_interval(torch.stack([b[k] for b in boot]).mean(0))
        out[name] = _r(sum(seeds) / len(seeds))  # NaN (-> None) when undefined, e.g. no positive label
        out[f"{name}_ci"] = [_r(low), _r(high)]
        out[f"{name}_seeds"] = [_r(v) for v in seeds]
    return out


def _r(x: float) -> float | None:
    """4 decimals for the result file; ``None`` (JSON null) for an undefined value (NaN, infinite)."""
    return round(float(x), 4) if math.isfinite(x) else None


def score(data: CreditData, c: Credit) -> dict:
    """Cross-fit the critics, compute every estimator's held-out per-step advantages, and score them against the
    labels for every ``(gamma, lam)``: ``{"rows": [...], "critic_ev": {...}}`` (``gamma`` / ``lam`` are ``None`` in
    a row whose estimator does not depend on them). Runs on one torch thread: its ops are small, and on a busy
    2-core machine a second OpenMP thread made them up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _score(data, c)
    finally:
        torch.set_num_threads(threads)


def _score(data: CreditData, c: Credit) -> dict:
    b = data.batch
    fold = fold_assignment(data.task_seeds, c.folds, c.fold_seed)
    groups = adv.group_index(data.task_seeds[b.traj_index])
    boot = (groups, bootstrap_counts(int(groups.max()) + 1, c.bootstrap, c.bootstrap_seed))
    rows: list[dict] = []
    evs: dict[str, dict[str, list[float | None]]] = {"step": {}, "token": {}}  # None: undefined
    for gamma in c.gammas:
        per_seed: dict[tuple[str, float], list[Tensor]] = {}
        for seed in c.critic_seeds:
            out, ev_step, ev_token = critic_advantages(data, fold, gamma, seed, c)
            for key, value in out.items():
                per_seed.setdefault(key, []).append(value)
            evs["step"].setdefault(f"{gamma:g}", []).append(_r(ev_step))
            evs["token"].setdefault(f"{gamma:g}", []).append(_r(ev_token))
        for (name, lam), values in per_seed.items():
            rows.append({"estimator": name, "gamma": gamma, "lam": lam, **summarize(values, data.labels, *boot)})
        for name, value in critic_free_advantages(data, fold, gamma, c.folds).items():
            rows.append({"estimator": name, "gamma": gamma, "lam": None, **summarize([value], data.labels, *boot)})
    rows.append({"estimator": "GRPO", "gamma": None, "lam": None, **summarize([grpo_rows(b)], data.labels, *boot)})
    return {"rows": rows, "critic_ev": evs}


def counts(trajs: Sequence[Trajectory], data: CreditData) -> dict:
    """Episodes, task seeds, samples per task, steps, action tokens, labels and outcomes of a record file."""
    steps = data.batch.num_rows
    positives = int(data.labels.sum())
    _, per_task = torch.unique(data.task_seeds, return_counts=True)
    return {"episodes": len(trajs), "task_seeds": int(per_task.numel()), "group_size": int(per_task.max()),
            "steps": steps, "action_tokens": int(data.token_features.shape[0]), "labels_positive": positives,
            "label_rate": _r(positives / steps), "success_rate": _r(sum(bool(t.success) for t in trajs) / len(trajs)),
            "mean_steps": _r(steps / len(trajs)), "truncated": sum(t.truncated for t in trajs)}


# -- stages and the command line -------------------------------------------------------------------------------


def machine() -> str:
    from steppo_train.precision import describe_cpu

    return describe_cpu()


def _cli(cmd: Sequence[str]) -> str:
    return shlex.join(["steppo", *cmd[len(STEPPO):]])


def stage_record(task: Task, warm: str, folder: Path, c: Credit) -> Path:
    """Stage 1: ``folder/rollout.jsonl`` (written as ``rollout.partial.jsonl`` with ``--resume``, renamed when
    complete) and ``folder/record.json`` (its command line and wall time); skipped when the file exists."""
    out = folder / "rollout.jsonl"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "rollout.partial.jsonl"
    cmd = [*STEPPO, "rollout", "--model", warm, "--env", task.env_id, *_env_args(task.env), "-n", str(c.task_seeds),
           "--group-size", str(c.group_size), "--seed", str(task.first_seed), "--temperature", f"{c.temperature:g}",
           "--max-tokens", str(task.max_tokens), "--sampling-seed", "0", "-q", "--resume", "-o", str(partial)]
    wall = _run(cmd, folder)
    partial.replace(out)
    (folder / "record.json").write_text(json.dumps({"command": _cli(cmd), "wall_s": round(wall, 1)}, indent=1) + "\n")
    return out


def stage_score(task: Task, record: Path, features: Path, dest: Path, c: Credit, command: str) -> None:
    """Stage 3: fit, score and write ``dest`` (skipped when it exists)."""
    if dest.exists():
        print(f"{task.name}: done (results in {dest})")
        return
    t0 = time.time()
    trajs, data, header = load_data(record, features)
    scored = score(data, c)
    meta_path = record.parent / "record.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and record.name == "rollout.jsonl" else {}
    rows = header["rows"]
    first = trajs[0]  # the env and sampling as recorded (a --record file may differ from the task's defaults)
    result = {"task": task.name, "env_id": first.env_id, "env": first.env_kwargs, "warm_start": header["model"],
              "temperature": first.sampling.temperature,
              "settings": dataclasses.asdict(c), "counts": counts(trajs, data), "machine": machine(),
              "commands": [x for x in (meta.get("command"), command) if x],
              "record_sha256": header["record_sha256"], "critics": "linear heads on frozen warm-start features",
              "seconds": {"record": meta.get("wall_s"), "features": _r(header["seconds"]),
                          "features_per_row": _r(header["seconds"] / rows), "score": _r(time.time() - t0)},
              "features_machine": header["machine"], "features_bf16_autocast": header.get("bf16_autocast", False), **scored}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    tmp.replace(dest)
    print(f"{task.name}: wrote {dest} ({result['seconds']['score']:.0f} s)")


def resolve_warm_start(task: Task, given: str | None) -> tuple[str, str]:
    """``(the model as the rollout gets it, a local folder for the features)``; a missing default warm start is a
    :class:`CreditError` naming the command that builds it."""
    if given is None:
        if not task.warm_start.exists():
            raise CreditError(f"no {task.name} warm start at {task.warm_start}: build it with `{task.build}` "
                              f"(or pass --{task.name}-warm-start PATH).")
        return str(task.warm_start), str(task.warm_start)
    if Path(given).exists():
        return str(Path(given).resolve()), str(Path(given).resolve())
    from steppo_agent.default_model import resolve_model
    from steppo_envs import UserError

    try:
        return given, resolve_model(given)
    except UserError as exc:
        raise CreditError(f"--{task.name}-warm-start {given!r}: {exc}") from None


def run_task(task: Task, args: argparse.Namespace, c: Credit, command: str) -> None:
    """Every stage of one task that is not done yet."""
    folder = args.work / task.name
    warm, model = resolve_warm_start(task, getattr(args, f"{task.name}_warm_start"))
    record = args.record.resolve() if args.record else stage_record(task, warm, folder, c)
    if args.until == "record":
        return
    features = stage_features(record, model, folder, c)
    if args.until == "features":
        return
    stage_score(task, record, features, args.results / f"{task.name}.json", c, command)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python experiments/credit.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("command", nargs="?", default="all", choices=("all", "report"),
                    help="all: every stage not done yet, then the report (default); report: only the report")
    ap.add_argument("--tasks", nargs="+", choices=("textworld", "multihop"), default=["textworld", "multihop"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "credit", help="bulky outputs (not committed)")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "credit", help="small outputs (committed)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md and img/ are (the report)")
    ap.add_argument("--textworld-warm-start", metavar="PATH", help="default: experiments/horizon.py's SFT checkpoint "
                    "under runs/horizon")
    ap.add_argument("--multihop-warm-start", metavar="PATH", help="default: experiments/multihop.py's SFT checkpoint "
                    "under runs/multihop")
    ap.add_argument("--until", choices=("record", "features", "score"), default="score",
                    help="stop after this stage (default: score, i.e. every stage)")
    ap.add_argument("--record", type=Path, help="score this record file instead of recording (one task only)")
    ap.add_argument("--task-seeds", type=int, default=Credit.task_seeds, help="tasks to record (default %(default)s)")
    ap.add_argument("--group-size", type=int, default=Credit.group_size, help="samples per task (default %(default)s)")
    ap.add_argument("--critic-seeds", type=int, default=len(Credit.critic_seeds), help="default %(default)s")
    ap.add_argument("--folds", type=int, default=Credit.folds, help="cross-fitting folds (default %(default)s)")
    ap.add_argument("--bootstrap", type=int, default=Credit.bootstrap, help="bootstrap replicates (default %(default)s)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    c = Credit(task_seeds=args.task_seeds, group_size=args.group_size, critic_seeds=tuple(range(args.critic_seeds)),
               folds=args.folds, bootstrap=args.bootstrap)
    command = shlex.join(["python", "experiments/credit.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.record is not None and len(args.tasks) != 1:
            raise CreditError("--record scores one task's records: name that task, e.g. --tasks textworld.")
        if min(c.task_seeds, c.group_size, c.folds, c.bootstrap, len(c.critic_seeds)) < 1 or c.folds < 2:
            raise CreditError("--task-seeds, --group-size, --critic-seeds and --bootstrap must be >= 1, --folds >= 2.")
        if args.command == "all":
            all_tasks = tasks(ROOT / "runs" / "horizon", ROOT / "runs" / "multihop")
            for name in args.tasks:
                run_task(all_tasks[name], args, c, command)
        from credit_report import write_report  # experiments/ is on sys.path when this file runs as a script

        write_report(args.results, args.docs)
    except CreditError as exc:
        print(f"steppo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
