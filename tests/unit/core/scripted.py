"""A scripted ``TextGenerator`` for strategy tests: an input that makes a stopping rule or a
hand-over happen on cue. The engine, the strategies and the rules stay the things under test."""

from __future__ import annotations

from ensemble_core.pool import ModelPool
from ensemble_core.ports import (
    Candidate,
    ContinuationScore,
    PromptStatistics,
    Sampling,
    SegmentLimits,
    SessionCounters,
)
from ensemble_core.spec import ModelSpec, PromptInput, PromptStyle


class ScriptedSession:
    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script = script
        self.turn = 0
        self.counters = SessionCounters(prompt_tokens=5)

    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        out = []
        for _ in samplings:
            text, finish = self.script[min(self.turn, len(self.script) - 1)]
            self.turn += 1
            words = text.split(" ")[: limits.max_new_tokens]
            ids = list(range(len(words)))
            self.counters.generated += len(ids)
            out.append(Candidate(" ".join(words), ids, [-1.0] * len(ids), finish))  # type: ignore[arg-type]
        return out

    def prompt_statistics(self) -> PromptStatistics:
        return PromptStatistics(mean_nll=2.0, mean_top1_prob=0.5, tokens=5)

    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        return [ContinuationScore(-float(len(c)), len(c)) for c in continuations]

    def count_tokens(self, text: str) -> int:
        return len(text.split(" "))

    def close(self) -> None:
        pass


class ScriptedGenerator:
    engine = "hf"
    device = "cpu"
    load_seconds = 0.0
    supports_concurrency = True

    def __init__(self, name: str, script: list[tuple[str, str]]) -> None:
        self.name = name
        self.script = script

    def open_session(
        self,
        prompt: PromptInput,
        *,
        style: PromptStyle | None = None,
        reuse_cache: bool = True,
        seed: int | None = None,
    ) -> ScriptedSession:
        return ScriptedSession(self.script)


def scripted_member(pool: ModelPool, name: str, script: list[tuple[str, str]]) -> ModelSpec:
    """A member whose generator follows ``script`` ((text, finish) per segment, last repeats)."""
    spec = ModelSpec(path=f"scripted/{name}/{abs(hash(tuple(script)))}", name=name, temperature=0.0)
    pool.load("generator", spec, lambda: ScriptedGenerator(name, script))
    return spec
