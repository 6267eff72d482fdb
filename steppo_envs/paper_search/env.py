"""``steppo/PaperSearch-v0``: find the papers that answer a research question, offline (PaSa-style).

Each step the agent makes up to ``max_tool_calls`` calls of ``search(query)`` (BM25 over the titles
and abstracts of 154k ML papers), ``related(paper_id)`` (papers similar to one already seen: the
offline stand-in for citation expansion), ``select(paper_ids)`` (add papers to the answer list) and
``finish()`` (end the episode). The observation re-renders the question, the action history, the
candidate pool (best first), the selected list and the steps left. Rewards: see :mod:`.reward`;
details in docs/paper_search.md.

``step_labels=True`` adds ``info["step_label"]``: 1 iff the step surfaced a gold paper that no earlier
step surfaced, or its ``select`` calls earned a positive :class:`RewardFn` score; else 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
from pydantic import ConfigDict, Field, field_validator

from steppo_envs.actions import ParsedAction, ToolCall, clean_action_text, format_hint, parse_action
from steppo_envs.config import ConfigError, build_config, renamed_options, with_max_steps
from steppo_envs.config_model import ConfigModel, PathStr
from steppo_envs.contract import check_can_step, check_render_mode, make_info, pick_task_index, text_space
from steppo_envs.paper_search.data import (
    SPLITS,
    PaperSearchResources,
    PaperTask,
    load_resources,
    load_tasks,
    read_user_questions,
    user_tasks,
)
from steppo_envs.paper_search.reward import GoldReward, RewardFn, selection_metrics
from steppo_envs.render import Section, render_sections, truncate_text
from steppo_envs.search import Backend, SearchHit, tokenize
from steppo_envs.tools import ToolSpec

__all__ = ["TOOLS", "PaperSearchConfig", "PaperSearchEnv", "parse_paper_ids"]

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "search",
        "Keyword search (BM25) over paper titles and abstracts; returns up to 10 papers published by the question's cut-off.",
        {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "keywords"}},
            "required": ["query"],
        },
        compact="Search",
    ),
    ToolSpec(
        "related",
        "Papers most similar to a paper you have already seen (by its title and abstract).",
        {
            "type": "object",
            "properties": {"paper_id": {"type": "string", "description": "a paper id from the candidates"}},
            "required": ["paper_id"],
        },
        compact="Related",
    ),
    ToolSpec(
        "select",
        "Add papers you have seen to the answer list.",
        {
            "type": "object",
            "properties": {
                "paper_ids": {
                    "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
                    "description": "paper ids (a list, or one comma-separated string)",
                }
            },
            "required": ["paper_ids"],
        },
        compact="Select",
        compact_argument="paper_ids",
    ),
    ToolSpec("finish", "End the search; the selected papers are your answer.", compact="Finish"),
)

SYSTEM_PROMPT = (
    "You are an academic search agent. Find the papers that answer the user's research question in an offline "
    "collection of machine-learning papers, and select them. Tools: search(query) keyword-searches titles and "
    "abstracts; related(paper_id) lists papers similar to one you have seen; select(paper_ids) adds papers to your "
    'answer; finish() ends the task. Up to {max_calls} tool calls per step, as <tool_call>{{"name": ..., '
    '"arguments": {{...}}}}</tool_call> blocks, or one compact call: Search[keywords], Related[paper id], '
    "Select[id1, id2], Finish[]. Selecting a relevant paper earns reward, a wrong one costs a little; repeated "
    "searches and unknown ids are penalised. You have {max_steps} steps."
)


@renamed_options(obs_budget_chars="budget_chars", backend="search_backend", show_progress="progress")
class PaperSearchConfig(ConfigModel):
    """Settings of ``steppo/PaperSearch-v0`` (pass as ``config=`` or as keyword overrides)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)  # reward_fn: any RewardFn object
    fix_hints: ClassVar[dict[str, str]] = {"reward_fn": "pass a RewardFn such as GoldReward(0.1), or None"}

    data_dir: PathStr | None = Field(None, description=(
        "The data root (holding ``paper_search/``); ``None`` uses ``$STEPPO_DATA_DIR`` or ``../shared/data``."))
    split: str = Field("train", description=(
        "``train`` (80% of AutoScholarQuery), ``test`` (the other 20% + LitSearch + RealScholarQuery), "
        "``test_autoscholar``, ``test_litsearch``, ``test_realscholar`` or ``all``; ignored with ``questions_file``."))
    questions_file: PathStr | None = Field(None, description=(
        "Your own questions, a JSONL / JSON file in the layout of ``scholargym_mlanth_matched.jsonl`` (see "
        "``QUESTIONS_LAYOUT``); every question of it is a task."))
    corpus_file: PathStr | None = Field(None, description=(
        "Your own corpus, a JSONL(.gz) / JSON file in the layout of the bundled corpus (see ``CORPUS_LAYOUT``), "
        "searched instead of the bundled one; needs ``questions_file``, whose gold ids are then ids of this "
        "corpus. With both files no data directory is needed."))
    include_partial: bool = Field(False, description=(
        "Also admit questions with only some gold papers in the corpus (scoring those)."))
    max_steps: int = Field(5, ge=1, description="Steps per episode (every step counts, invalid ones too).")
    max_tool_calls: int = Field(3, ge=1, description="Tool calls one step may carry.")
    top_k: int = Field(10, ge=1, description="Papers a ``search`` returns.")
    related_k: int = Field(10, ge=1, description="Papers a ``related`` returns.")
    related_terms: int = Field(12, ge=1, description="How many tf-idf terms of a paper form the ``related`` query.")
    date_slack_years: int = Field(1, ge=0, description=(
        "Papers are searchable when ``year <= question year + date_slack_years`` (the corpus has venue years, "
        "which lag the arXiv date the question's cut-off comes from)."))
    pool_show: int = Field(20, ge=1, description="Candidates shown in the observation (best first).")
    abstract_chars: int = Field(240, ge=0, description="Characters of each candidate's abstract shown.")
    budget_chars: int = Field(8000, ge=500, description=(
        "Character budget of the whole observation (deprecated old name: ``obs_budget_chars``)."))
    wrong_select_penalty: float = Field(0.1, ge=0, description=(
        "Cost of selecting a non-gold paper (used by the default :class:`GoldReward`)."))
    repeat_penalty: float = Field(0.5, ge=0, description=(
        "Cost of a repeated search query, or a ``related`` on a paper already expanded."))
    unknown_id_penalty: float = Field(0.5, ge=0, description=(
        "Cost of a ``related`` on, or a ``select`` call naming, an id the agent has not seen."))
    invalid_penalty: float = Field(0.0, ge=0, description="Cost of a malformed action.")
    reward_fn: RewardFn | None = Field(None, description=(
        "How newly selected papers are scored; ``None`` means ``GoldReward(wrong_select_penalty)``."))
    search_backend: Backend = Field("bm25s", description=(
        "BM25 implementation, ``bm25s`` or ``rank_bm25`` (slow on this corpus; deprecated old name: ``backend``)."))
    title_weight: int = Field(2, ge=1, description="How many times a title counts in its BM25 document.")
    k1: float = Field(1.5, ge=0, description="BM25 ``k1``.")
    b: float = Field(0.75, ge=0, le=1, description="BM25 ``b``.")
    progress: bool = Field(True, description=(
        "Progress bars while parsing the corpus / building the index the first time (deprecated old name: "
        "``show_progress``)."))
    step_labels: bool = Field(False, description=(
        "Put a ground-truth progress label in ``info[\"step_label\"]`` each step: 1 iff a tool of the step surfaced "
        "a gold paper that no earlier step of the episode surfaced, or the step's ``select`` calls earned a positive "
        "reward-function score (the answer's reward, not counting penalties); else 0."))

    @field_validator("split")
    @classmethod
    def _known_split(cls, split: str) -> str:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is not a split: use one of {', '.join(SPLITS)}.")
        return split


def _tasks_and_resources(cfg: PaperSearchConfig) -> tuple[list[PaperTask], PaperSearchResources]:
    """The questions and the search resources of a configuration; the question files are checked
    before the (possibly slow) index is loaded."""
    if cfg.corpus_file and not cfg.questions_file:
        raise ConfigError(
            "corpus_file needs questions_file: the bundled questions' gold papers are ids of the bundled corpus, "
            "so pass questions_file=... whose gold ids are papers of your corpus."
        )
    questions = read_user_questions(cfg.questions_file) if cfg.questions_file else None
    tasks: list[PaperTask] = []
    if questions is None:
        tasks = load_tasks(cfg.data_dir, cfg.split, include_partial=cfg.include_partial)
        if not tasks:
            raise ConfigError(f"split {cfg.split!r} has no questions in this data directory: pick another split or data_dir.")
    resources = load_resources(
        cfg.data_dir,
        backend=cfg.search_backend,
        k1=cfg.k1,
        b=cfg.b,
        title_weight=cfg.title_weight,
        show_progress=cfg.progress,
        corpus_file=cfg.corpus_file,
    )
    if questions is not None:
        assert cfg.questions_file is not None
        tasks = user_tasks(questions, resources.corpus, cfg.questions_file, include_partial=cfg.include_partial)
        if not tasks:
            raise ConfigError(
                f"questions_file {cfg.questions_file!r} has no question whose gold papers are all in the corpus: "
                "pass include_partial=True or add gold ids of corpus papers."
            )
    return tasks, resources


_ID_SPLIT_RE = re.compile(r"[\s,;]+")


def parse_paper_ids(value: Any) -> list[str] | None:
    """The ids of a ``select`` argument (a list of strings, or one string separated by commas / spaces /
    semicolons, quotes and brackets ignored), de-duplicated in order; ``None`` when malformed or empty."""
    if isinstance(value, str):
        parts = _ID_SPLIT_RE.split(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [p for v in value for p in _ID_SPLIT_RE.split(v)]
    else:
        return None
    ids = [p.strip("\"'`[]()<>{}") for p in parts]
    ids = list(dict.fromkeys(i for i in ids if i))
    return ids or None


@dataclass
class _Candidate:
    best_rank: int
    times: int
    order: int


@dataclass
class _Episode:
    task: PaperTask
    max_year: int
    gold: frozenset[int] = frozenset()  # corpus indices of the gold papers
    pool: dict[int, _Candidate] = field(default_factory=dict)
    selected: list[int] = field(default_factory=list)
    queries: set[str] = field(default_factory=set)
    expanded: set[int] = field(default_factory=set)
    history: list[str] = field(default_factory=list)
    last_notes: list[str] = field(default_factory=list)
    last_hits: list[int] = field(default_factory=list)
    last_select_score: float = 0.0  # the RewardFn score of this step's selections
    feedback: str | None = None
    step: int = 0
    done: bool = False


class PaperSearchEnv(gym.Env[str, str]):
    """Offline academic paper search (see module docstring and docs/paper_search.md)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self, config: PaperSearchConfig | None = None, *, render_mode: str | None = None, **overrides: Any
    ) -> None:
        self.config = build_config(PaperSearchConfig, config, overrides)
        self.render_mode = check_render_mode(render_mode)
        cfg = self.config
        self.tasks, self.resources = _tasks_and_resources(cfg)
        self.reward_fn: RewardFn = (
            cfg.reward_fn if cfg.reward_fn is not None else GoldReward(cfg.wrong_select_penalty)
        )
        self.tools = TOOLS
        self.system_prompt = SYSTEM_PROMPT.format(max_calls=cfg.max_tool_calls, max_steps=cfg.max_steps)
        self.observation_space = text_space()
        self.action_space = text_space()
        self._hint = format_hint(self.tools, allow_answer=False)
        self._ep: _Episode | None = None
        self._obs = ""

    def set_max_steps(self, max_steps: int) -> None:
        """Use ``max_steps`` as the step limit from the next episode on (``gymnasium.make(id,
        max_episode_steps=N)`` calls it, see :mod:`steppo_envs.step_limit`)."""
        self.config = with_max_steps(self.config, max_steps)
        self.system_prompt = SYSTEM_PROMPT.format(max_calls=self.config.max_tool_calls, max_steps=max_steps)

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode on a random question (``options={"task_index": i}`` picks question ``i``)."""
        super().reset(seed=seed)
        i = pick_task_index(options, len(self.tasks), self.np_random, owner="steppo/PaperSearch-v0")
        task = self.tasks[i]
        index_of = self.resources.corpus.index_of
        gold = frozenset(index_of[g] for g in task.gold_ids if g in index_of)
        self._ep = _Episode(task=task, max_year=task.year + self.config.date_slack_years, gold=gold)
        self._obs = self._render()
        return self._obs, self._info(None)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run up to ``max_tool_calls`` tool calls, or report an invalid action."""
        ep = self._ep
        check_can_step("steppo/PaperSearch-v0", started=ep is not None, done=ep is not None and ep.done)
        assert ep is not None
        cfg = self.config
        ep.step += 1
        ep.last_notes, ep.last_hits, ep.last_select_score, ep.feedback = [], [], 0.0, None
        gold_surfaced = len(ep.gold & ep.pool.keys())
        action = clean_action_text(action)
        parsed = parse_action(action, self.tools, allow_answer=False, max_tool_calls=cfg.max_tool_calls)
        if parsed.valid:
            problem = next((p for p in map(self._argument_problem, parsed.tool_calls) if p), None)
            if problem:
                parsed = ParsedAction(
                    kind="invalid", reasoning=parsed.reasoning, format=parsed.format, error=problem
                )
        reward = 0.0
        finished = False
        if not parsed.valid:
            reward -= cfg.invalid_penalty
            ep.feedback = f"Invalid action: {parsed.error}. {self._hint}"
            ep.history.append(f"{ep.step}. invalid action ({parsed.error})")
        else:
            for call in parsed.tool_calls:
                if finished:
                    ep.last_notes.append(f"{call.name}: ignored, it came after finish().")
                    continue
                r, finished = self._run(call)
                reward += r
        terminated = finished
        truncated = not finished and ep.step >= cfg.max_steps
        ep.done = terminated or truncated
        self._obs = self._render()
        info = self._info(parsed, valid=parsed.valid, final=ep.done)
        if cfg.step_labels:
            info["step_label"] = int(len(ep.gold & ep.pool.keys()) > gold_surfaced or ep.last_select_score > 0)
        return self._obs, float(reward), terminated, truncated, info

    def render(self) -> str | None:
        """The current observation (``render_mode="ansi"``)."""
        return self._obs if self.render_mode == "ansi" else None

    # -- tools ----------------------------------------------------------------------------------------
    @staticmethod
    def _argument_problem(call: ToolCall) -> str | None:
        if call.name == "search" and not str(call.arguments.get("query", "")).strip():
            return "the search query is empty"
        if call.name == "related" and not str(call.arguments.get("paper_id", "")).strip():
            return "related needs a paper id"
        if call.name == "select" and parse_paper_ids(call.arguments.get("paper_ids")) is None:
            return "select needs paper ids (a list of strings or a comma-separated string)"
        return None

    def _run(self, call: ToolCall) -> tuple[float, bool]:
        """Execute one valid call; return (reward, finished)."""
        ep = self._ep
        assert ep is not None
        if call.name == "search":
            return self._search(str(call.arguments["query"]).strip()), False
        if call.name == "related":
            return self._related(str(call.arguments["paper_id"]).strip().strip("\"'`[]")), False
        if call.name == "select":
            ids = parse_paper_ids(call.arguments["paper_ids"])
            assert ids is not None
            return self._select(ids), False
        ep.history.append(f"{ep.step}. finish() with {len(ep.selected)} paper(s) selected")
        ep.last_notes.append("finish: episode over.")
        return 0.0, True

    def _surface(self, hits: list[SearchHit]) -> int:
        ep = self._ep
        assert ep is not None
        new = 0
        ep.last_hits.extend(h.index for h in hits)
        for rank, h in enumerate(hits, start=1):
            c = ep.pool.get(h.index)
            if c is None:
                ep.pool[h.index] = _Candidate(rank, 1, len(ep.pool))
                new += 1
            else:
                c.best_rank, c.times = min(c.best_rank, rank), c.times + 1
        return new

    def _search(self, query: str) -> float:
        ep = self._ep
        assert ep is not None
        terms = tokenize(query)
        key = " ".join(terms)
        shown = truncate_text(query, 120)
        if key in ep.queries:
            ep.history.append(f"{ep.step}. search({shown!r}) repeated (penalty)")
            ep.last_notes.append(f"search {shown!r}: already searched; its results are in the candidates.")
            return -self.config.repeat_penalty
        ep.queries.add(key)
        hits = self.resources.search(terms, self.config.top_k, ep.max_year) if terms else []
        new = self._surface(hits)
        ep.history.append(f"{ep.step}. search({shown!r}) -> {len(hits)} results, {new} new")
        ids = ", ".join(h.id for h in hits) or "no results (try other keywords)"
        ep.last_notes.append(f"search {shown!r}: {ids}")
        return 0.0

    def _related(self, paper_id: str) -> float:
        ep = self._ep
        assert ep is not None
        shown = truncate_text(paper_id, 80)
        idx = self.resources.corpus.index_of.get(paper_id)
        if idx is None or idx not in ep.pool:
            ep.history.append(f"{ep.step}. related({shown!r}) unknown id (penalty)")
            ep.last_notes.append(
                f"related {shown!r}: not a paper id you have seen; use an id from the candidates."
            )
            return -self.config.unknown_id_penalty
        if idx in ep.expanded:
            ep.history.append(f"{ep.step}. related({shown!r}) repeated (penalty)")
            ep.last_notes.append(f"related {shown!r}: already expanded; its results are in the candidates.")
            return -self.config.repeat_penalty
        ep.expanded.add(idx)
        terms = self.resources.related_terms(idx, self.config.related_terms)
        hits = self.resources.search(terms, self.config.related_k, ep.max_year, exclude=idx)
        new = self._surface(hits)
        ep.history.append(f"{ep.step}. related({shown!r}) -> {len(hits)} results, {new} new")
        ep.last_notes.append(f"related {shown!r}: " + (", ".join(h.id for h in hits) or "no results"))
        return 0.0

    def _select(self, ids: list[str]) -> float:
        ep = self._ep
        assert ep is not None
        corpus = self.resources.corpus
        known = [corpus.index_of[i] for i in ids if i in corpus.index_of and corpus.index_of[i] in ep.pool]
        unknown = [i for i in ids if i not in corpus.index_of or corpus.index_of[i] not in ep.pool]
        new = [i for i in known if i not in ep.selected]
        reward = 0.0
        if new:
            score = self.reward_fn(ep.task, [corpus.paper(i) for i in new])
            ep.last_select_score += score
            reward += score
            ep.selected.extend(new)
        if unknown:
            reward -= self.config.unknown_id_penalty
        parts = [f"{len(new)} added"]
        if len(known) > len(new):
            parts.append(f"{len(known) - len(new)} already selected")
        if unknown:
            parts.append("unknown (penalty): " + truncate_text(", ".join(unknown), 160))
        ep.history.append(f"{ep.step}. select({truncate_text(', '.join(ids), 160)}) -> " + "; ".join(parts))
        ep.last_notes.append("select: " + "; ".join(parts))
        return reward

    # -- observation and info ---------------------------------------------------------------------------
    def _line(self, i: int, with_abstract: bool) -> str:
        c = self.resources.corpus
        venue = f"{c.venues[i].upper()} {int(c.years[i])}".strip()
        line = f"- [{c.ids[i]}] {c.titles[i]} ({venue})"
        if with_abstract and self.config.abstract_chars > 0:
            line += "\n  " + truncate_text(" ".join(c.abstracts[i].split()), self.config.abstract_chars)
        return line

    def _render(self) -> str:
        ep = self._ep
        assert ep is not None
        cfg = self.config
        searchable = (
            f"published in {ep.max_year} or earlier (question date {ep.task.date})" if ep.task.date else "all (the question has no date)"
        )
        task = f"Question: {ep.task.question}\nFind the papers that answer it. Searchable papers: {searchable}."
        sections = [Section(task, title="Task", keep=True)]
        if ep.history:
            sections.append(Section("\n".join(ep.history), title="History", priority=1))
        chosen = set(ep.selected)
        ranked = sorted(
            (i for i in ep.pool if i not in chosen),
            key=lambda i: (ep.pool[i].best_rank, -ep.pool[i].times, ep.pool[i].order),
        )
        if ranked:
            shown = ranked[: cfg.pool_show]
            body = "\n".join(self._line(i, True) for i in shown)
            title = f"Candidates (best first, {len(shown)} of {len(ranked)})"
            sections.append(Section(body, title=title, priority=2, min_chars=200))
        if ep.selected:
            body = "\n".join(self._line(i, False) for i in ep.selected)
            sections.append(Section(body, title=f"Selected ({len(ep.selected)})", priority=3))
        if ep.last_notes:
            sections.append(Section("\n".join(ep.last_notes), title="Last step", priority=4))
        if ep.feedback:
            sections.append(Section(truncate_text(ep.feedback, 1000), title="Feedback", keep=True))
        left = max(0, cfg.max_steps - ep.step)
        status = (
            "Episode over."
            if ep.done
            else f"Steps left: {left}. Tool calls per step: up to {cfg.max_tool_calls}."
        )
        sections.append(Section(status, keep=True))
        return render_sections(sections, cfg.budget_chars)

    def _info(self, action: ParsedAction | None, *, valid: bool = True, final: bool = False) -> dict[str, Any]:
        ep = self._ep
        assert ep is not None
        c = self.resources.corpus
        gold = ep.task.gold_ids
        metrics = selection_metrics([c.ids[i] for i in ep.selected], gold, [c.ids[i] for i in ep.pool])
        return make_info(
            task_id=ep.task.qid,
            system_prompt=self.system_prompt,
            tools=self.tools,
            step=ep.step,
            max_steps=self.config.max_steps,
            action=action,
            valid=valid,
            feedback=ep.feedback,
            metrics=metrics,
            success=final and metrics["recall_all"] == 1.0,
            extra={
                "split": ep.task.split,
                "source": ep.task.source,
                "date": ep.task.date,
                "max_year": ep.max_year,
                "selected": [c.ids[i] for i in ep.selected],
                "n_candidates": len(ep.pool),
                "tool_results": list(ep.last_notes),
                "surfaced_this_step": [c.ids[i] for i in ep.last_hits],
            },
        )
