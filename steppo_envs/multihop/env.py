"""``steppo/MultiHopQA-v0``: answer a multi-hop question by searching a pooled Wikipedia-paragraph corpus.

Each step the agent either calls ``search(query)`` (Hermes tool call or ``Search[query]``) and sees
the top-k BM25 passages, or answers (``<answer>...</answer>`` or ``Answer[...]``), which ends the
episode with reward 1.0 for an exact match (SQuAD-normalised, any alias) and 0.0 otherwise. The
observation is the whole state re-rendered each step inside ``budget_chars``.

With ``step_labels=True`` each step's ``info["step_label"]`` is a ground-truth progress label: 1 iff
the step's search results showed a supporting paragraph (a supporting title of the question) that no
earlier step of the episode showed (``support_recall`` went up), or the step is an answer with an
exact match (reward 1.0); else 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from pydantic import ConfigDict, Field

from steppo_envs.actions import ParsedAction, clean_action_text, format_hint, parse_action
from steppo_envs.config import ConfigError, build_config, renamed_options, with_max_steps
from steppo_envs.config_model import ConfigModel, PathStr
from steppo_envs.contract import check_can_step, check_render_mode, make_info, pick_task_index, text_space
from steppo_envs.metrics import best_f1, exact_match
from steppo_envs.multihop.data import (
    SUBDIR,
    Paragraph,
    QAExample,
    dedup_paragraphs,
    load_dataset,
    load_hub_hotpotqa,
    parse_hub_spec,
    pooled_corpus,
    user_file_keys,
)
from steppo_envs.paths import resolve_data_dir
from steppo_envs.render import Section, render_sections, truncate_text
from steppo_envs.search import Backend, BM25Index, Passage, SearchHit
from steppo_envs.tools import ToolSpec

__all__ = ["SEARCH_TOOL", "MultiHopQAConfig", "MultiHopQAEnv", "load_task_data"]


@renamed_options(dataset="split")
class MultiHopQAConfig(ConfigModel):
    """Settings of :class:`MultiHopQAEnv` (pass as ``config=`` or as keyword overrides)."""

    model_config = ConfigDict(frozen=True)

    data_dir: PathStr | None = Field(None, description=(
        "Folder holding ``multihop_qa/``; ``None`` uses ``$STEPPO_DATA_DIR`` or ``../shared/data``."))
    split: str = Field("train", description=(
        "``\"train\"`` (IRCoT HotpotQA 500 + HotpotQA train 100, minus eval overlaps), ``\"eval\"`` (HotpotQA, "
        "MuSiQue and 2Wiki, 200 each), a dataset name such as ``\"musique_dev200\"``, the path of your own "
        "``.json`` / ``.jsonl`` file in the HotpotQA layout (its paragraphs are added to the searched corpus), a "
        "comma-separated list of those, or ``\"hub:hotpot_qa[:split]\"`` (needs the ``datasets`` extra). "
        "Deprecated old name: ``dataset``."))
    max_steps: int = Field(5, ge=1, description=(
        "Steps per episode (tool calls, answers and invalid actions all count); the last one truncates the "
        "episode when it is not an answer."))
    top_k: int = Field(5, ge=1, description="Passages returned by one search.")
    budget_chars: int = Field(6000, ge=500, description="Character budget of one observation (about 4 characters per token).")
    passage_chars: int = Field(600, ge=40, description="Each passage of the latest search results is cut to this many characters.")
    history_passage_chars: int = Field(160, ge=0, description="Each passage of earlier searches is cut to this many characters.")
    search_backend: Backend = Field("bm25s", description="``\"bm25s\"`` (fast, default) or ``\"rank_bm25\"`` (pure-Python reference).")
    title_weight: int = Field(1, ge=1, description="How many times a paragraph's title counts in its BM25 document.")
    cache_index: bool = Field(True, description="Keep the BM25 index in steppo's cache directory and reuse it.")
    invalid_penalty: float = Field(0.0, ge=0, description=(
        "Subtracted from the reward of an invalid step (non-negative; 0.1 gives -0.1)."))
    max_query_chars: int = Field(300, ge=1, description="Longer queries are cut to this many characters.")
    max_tool_calls: int = Field(1, ge=1, description="Tool calls allowed in one step (each is a search; all results are shown).")
    expert: bool = Field(False, description=(
        "Put the oracle's next action in ``info[\"extra\"][\"expert_action\"]`` (for ``--backend expert`` and SFT "
        "warm starts): ``Search[title]`` for each supporting title not yet retrieved nor searched, in dataset order, "
        "then ``Answer[gold answer]`` (also on the last step)."))
    step_labels: bool = Field(False, description=(
        "Put a ground-truth progress label in ``info[\"step_label\"]`` each step: 1 iff the step's search results "
        "showed a supporting paragraph (a supporting title of the question) that no earlier step of the episode "
        "showed, or the step answers with an exact match (reward 1.0); else 0."))


SEARCH_TOOL = ToolSpec(
    name="search",
    description="Search a collection of Wikipedia paragraphs with BM25 keyword matching and return the best passages.",
    parameters={
        "type": "object",
        "properties": {"query": {"type": "string", "description": "keywords, e.g. an entity name plus a relation"}},
        "required": ["query"],
    },
    compact="Search",
)

SYSTEM_PROMPT = """You answer multi-hop questions about Wikipedia by searching a collection of Wikipedia paragraphs.
Each turn shows the question, your earlier searches and their results, and the steps you have left.
Reply each turn with exactly one action, after any reasoning you want to write:
- search: <tool_call>{{"name": "search", "arguments": {{"query": "your keywords"}}}}</tool_call> or Search[your keywords]
- answer: <answer>your short answer</answer> or Answer[your short answer]
Search for one entity or fact at a time; follow the clues from one passage to the next.
Answering ends the episode. The answer is scored by exact match against the gold answer, so give only
the answer itself (a name, date, number, or yes/no), not a sentence. You have {max_steps} steps in total;
an unanswered question scores 0."""

INSTRUCTIONS = (
    "Search with Search[keywords] and answer with Answer[short answer] (or the search tool call / "
    "<answer>...</answer>). Give only the answer words: they are scored by exact match."
)


@dataclass(frozen=True)
class TaskData:
    """The examples of one dataset and the BM25 index over the shared corpus."""

    examples: tuple[QAExample, ...]
    index: BM25Index


@functools.lru_cache(maxsize=8)
def _index_for(paragraphs: tuple[Paragraph, ...], backend: Backend, title_weight: int, cache: bool) -> BM25Index:
    passages = [Passage(id=f"p{i}", title=p.title, text=p.text) for i, p in enumerate(paragraphs)]
    return BM25Index(passages, backend=backend, title_weight=title_weight, cache=cache)


@functools.lru_cache(maxsize=8)
def _load_cached(
    root: str | None, dataset: str, files: tuple[tuple[str, str], ...], backend: Backend, title_weight: int, cache: bool
) -> TaskData:
    """``files`` (each user file's path and content hash) is part of the cache key only."""
    hub = parse_hub_spec(dataset)
    if hub is not None:
        examples = load_hub_hotpotqa(hub[1])
        paragraphs = dedup_paragraphs(p for ex in examples for p in ex.paragraphs)
    else:
        assert root is not None
        examples = load_dataset(root, dataset)
        paragraphs = pooled_corpus(root)
        if files:  # a user file's paragraphs join the pooled corpus (the bundled ones are in it already)
            paragraphs = dedup_paragraphs([*paragraphs, *(p for ex in examples for p in ex.paragraphs)])
    if not examples:
        raise ConfigError(f"split {dataset!r} has no questions: choose another split or check the data files.")
    return TaskData(examples, _index_for(paragraphs, backend, title_weight, cache))


def load_task_data(
    data_dir: str | None, dataset: str, backend: Backend = "bm25s", title_weight: int = 1, cache: bool = True
) -> TaskData:
    """Examples and search index for a configuration, cached in-process (the index also on disk).

    Local datasets share one corpus pooled from every file under the data directory (``data_dir``,
    else ``$STEPPO_DATA_DIR``, else ``../shared/data``), plus the paragraphs of a user file's
    questions; a hub dataset (``"hub:hotpot_qa"``) needs no data directory and searches the pooled
    paragraphs of its own examples. A user file is keyed by its content hash, here and in the index
    cache (which hashes the corpus), so an edited file is never searched through a stale index.
    """
    if parse_hub_spec(dataset):
        return _load_cached(None, dataset, (), backend, title_weight, cache)
    files = user_file_keys(dataset)  # a missing file is reported before the data directory
    root = str(resolve_data_dir(data_dir, subdir=SUBDIR).parent)
    return _load_cached(root, dataset, files, backend, title_weight, cache)


@dataclass
class _Turn:
    """One step of the episode as the agent sees it in the history."""

    step: int
    queries: list[str] = field(default_factory=list)
    hits: list[list[SearchHit]] = field(default_factory=list)
    error: str | None = None


class MultiHopQAEnv(gym.Env[str, str]):
    """Multi-hop question answering with a BM25 ``search`` tool (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}

    def __init__(self, config: MultiHopQAConfig | None = None, *, render_mode: str | None = None, **overrides: Any) -> None:
        self.config = build_config(MultiHopQAConfig, config, overrides)
        self.render_mode = check_render_mode(render_mode)
        cfg = self.config
        data = load_task_data(cfg.data_dir, cfg.split, cfg.search_backend, cfg.title_weight, cfg.cache_index)
        self.examples = data.examples
        self.index = data.index
        self.tools: tuple[ToolSpec, ...] = (SEARCH_TOOL,)
        self.system_prompt = SYSTEM_PROMPT.format(max_steps=cfg.max_steps)
        self.observation_space = text_space()
        self.action_space = text_space()
        self._example: QAExample | None = None
        self._turns: list[_Turn] = []
        self._retrieved_titles: set[str] = set()
        self._step = 0
        self._done = False
        self._obs = ""

    def set_max_steps(self, max_steps: int) -> None:
        """Use ``max_steps`` as the step limit from the next episode on (``gymnasium.make(id,
        max_episode_steps=N)`` calls it, see :mod:`steppo_envs.step_limit`)."""
        self.config = with_max_steps(self.config, max_steps)
        self.system_prompt = SYSTEM_PROMPT.format(max_steps=max_steps)

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a random question (``options={"task_index": i}`` picks question ``i``)."""
        super().reset(seed=seed)
        index = pick_task_index(options, len(self.examples), self.np_random, owner="steppo/MultiHopQA-v0")
        self._example = self.examples[index]
        self._turns = []
        self._retrieved_titles = set()
        self._step = 0
        self._done = False
        self._obs = self._render()
        return self._obs, self._info(None, extra={"task_index": index, "source": self._example.source})

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run one search, score one answer, or report an invalid action."""
        check_can_step("steppo/MultiHopQA-v0", started=self._example is not None, done=self._done)
        assert self._example is not None
        cfg = self.config
        self._step += 1
        action = clean_action_text(action)
        parsed = parse_action(action, self.tools, allow_answer=True, max_tool_calls=cfg.max_tool_calls)
        if parsed.kind == "tool_call":
            queries = [str(c.arguments.get("query", "")).strip()[: cfg.max_query_chars] for c in parsed.tool_calls]
            if not all(queries):
                parsed = ParsedAction(
                    kind="invalid", reasoning=parsed.reasoning, format=parsed.format, error="the search query is empty"
                )

        reward, terminated, em, f1 = 0.0, False, 0.0, 0.0
        recall_before = self.support_recall()
        extra: dict[str, Any] = {"source": self._example.source}
        turn = _Turn(step=self._step)
        if parsed.kind == "answer":
            answer = parsed.answer or ""
            em, f1 = exact_match(answer, self._example.answers), best_f1(answer, self._example.answers)
            reward, terminated = em, True
            extra.update(prediction=answer, gold_answers=list(self._example.answers))
        elif parsed.kind == "tool_call":
            for query in queries:
                hits = self.index.search(query, k=cfg.top_k)
                turn.queries.append(query)
                turn.hits.append(hits)
                self._retrieved_titles.update(h.title for h in hits)
            extra.update(queries=turn.queries, retrieved_titles=[h.title for hs in turn.hits for h in hs])
        else:
            turn.error = parsed.error or "invalid action"
            reward = 0.0 - float(cfg.invalid_penalty)
        self._turns.append(turn)
        truncated = not terminated and self._step >= cfg.max_steps
        self._done = terminated or truncated
        self._obs = self._render()
        feedback = None if parsed.valid else f"{turn.error}. {format_hint(self.tools)}"
        info = self._info(parsed, feedback=feedback, em=em, f1=f1, success=terminated and em == 1.0, extra=extra)
        if cfg.step_labels:
            progressed = em == 1.0 if parsed.kind == "answer" else self.support_recall() > recall_before
            info["step_label"] = int(progressed)
        return self._obs, float(reward), terminated, truncated, info

    def render(self) -> str | None:
        """The current observation (``render_mode="ansi"``); ``None`` otherwise."""
        return self._obs if self.render_mode == "ansi" else None

    # -- helpers -----------------------------------------------------------------------------------
    def support_recall(self) -> float:
        """Fraction of the question's supporting titles among the passages retrieved so far."""
        support = self._example.supporting_titles if self._example else ()
        return sum(t in self._retrieved_titles for t in support) / len(support) if support else 0.0

    def expert_action(self) -> str:
        """The oracle's next action: search the next supporting title that is neither retrieved yet nor already
        searched for, else (or on the last step) answer with the gold answer."""
        assert self._example is not None
        searched = {q for t in self._turns for q in t.queries}
        if self.config.max_steps - self._step > 1:
            for title in self._example.supporting_titles:
                if title not in self._retrieved_titles and title[: self.config.max_query_chars] not in searched:
                    return f"Search[{title}]"
        return f"Answer[{self._example.answers[0]}]"

    def _info(
        self,
        action: ParsedAction | None,
        *,
        feedback: str | None = None,
        em: float = 0.0,
        f1: float = 0.0,
        success: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        assert self._example is not None
        searches = sum(len(t.queries) for t in self._turns)
        if self.config.expert and not self._done:
            extra = {**(extra or {}), "expert_action": self.expert_action()}
        return make_info(
            task_id=self._example.id,
            system_prompt=self.system_prompt,
            tools=self.tools,
            step=self._step,
            max_steps=self.config.max_steps,
            action=action,
            valid=action.valid if action is not None else True,
            feedback=feedback,
            metrics={"em": em, "f1": f1, "support_recall": self.support_recall(), "searches": float(searches)},
            success=success,
            extra=extra,
        )

    def _format_hits(self, hits: list[SearchHit], chars: int) -> str:
        if not hits:
            return "(no passages matched these keywords; try other words)"
        lines = []
        for rank, hit in enumerate(hits, 1):
            body = f": {truncate_text(hit.text, chars)}" if chars > 0 else ""
            lines.append(f"[{rank}] {hit.title}{body}")
        return "\n".join(lines)

    def _turn_section(self, turn: _Turn, latest: bool) -> Section:
        if turn.error is not None:
            text = f"Your action was invalid: {turn.error}."
            if latest:
                text += " " + format_hint(self.tools)
            return Section(text, title=f"Step {turn.step}: invalid action", priority=3 if latest else 0)
        if not turn.queries:  # the answer step
            return Section("You answered.", title=f"Step {turn.step}: answer", priority=0)
        chars = self.config.passage_chars if latest else self.config.history_passage_chars
        heading = "Latest results" if latest else "Earlier search"
        body = "\n\n".join(self._format_hits(hits, chars) for hits in turn.hits)
        queries = "; ".join(f"Search[{q}]" for q in turn.queries)
        return Section(body, title=f"Step {turn.step}, {heading.lower()}: {queries}", priority=1 if latest else 0)

    def _render(self) -> str:
        assert self._example is not None
        left = self.config.max_steps - self._step
        sections = [
            Section(self._example.question, title="Question", keep=True),
            Section(INSTRUCTIONS, title="How to act", priority=2),
        ]
        for i, turn in enumerate(self._turns):
            sections.append(self._turn_section(turn, latest=i == len(self._turns) - 1))
        if self._done:
            status = "The episode has ended."
        else:
            status = f"Steps left: {left}." + (" This is your last step: answer now." if left == 1 else "")
        sections.append(Section(status, keep=True))
        return render_sections(sections, self.config.budget_chars)
