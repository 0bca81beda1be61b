"""``llm_blender`` (``aggregation_level: response``): pairwise ranking, optional generative fusion.

Algorithm: every selected member writes ``samples_per_model`` whole answers; the candidates
meet pairwise; for each pair the scorers judge the two side by side and the higher wins; candidates are ranked by wins (ties: mean primary raw
score). Without ``fuser`` the top-ranked candidate is the answer; with ``fuser`` (a member
name, a model path, or a model spec) that model reads the prompt and the ``fuse_top_k`` best
candidates and writes the final answer (GenFuser). Reference: Jiang et al., "LLM-Blender:
Ensembling Large Language Models with Pairwise Ranking and Generative Fusion" (ACL 2023); the
pairwise judge here is the configured scorer, not a trained PairRanker.
Cost: the decodes, n(n-1)/2 two-candidate scorer calls, and one fuser decode.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field, field_validator

from ensemble_core.aggregation.base import CandidateRecord
from ensemble_core.aggregation.level_base import LevelJob
from ensemble_core.aggregation.response_base import ResponseAggregator
from ensemble_core.aggregation.response_best_of_n import (
    DEFAULT_SCORERS,
    ScoredResponseParams,
    scoring_request,
)
from ensemble_core.answer_extraction import ExtractedAnswer
from ensemble_core.errors import ConfigError
from ensemble_core.members import Member, request_sampling, segment_limits
from ensemble_core.ports import Sampling
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

DEFAULT_FUSION_INSTRUCTION = (
    "Here are candidate answers to the question above, best first:\n\n{candidates}\n\n"
    "Using what they get right and fixing what they get wrong, write the single best answer."
)


class BlenderResponseParams(ScoredResponseParams):
    fuser: str | dict[str, Any] | None = Field(
        None, description="model that fuses the top candidates: a member name, a model path or a model spec"
    )
    fuse_top_k: int = Field(3, ge=1, description="how many top-ranked candidates the fuser reads")
    fusion_instruction: str = Field(
        DEFAULT_FUSION_INSTRUCTION, description="appended to the last user message; {candidates} is replaced"
    )

    @field_validator("fuser")
    @classmethod
    def _valid_fuser(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, dict):
            ModelSpec.model_validate(value)
        return value


class LLMBlenderResponseAggregator(ResponseAggregator):
    Params = BlenderResponseParams

    def pick(
        self,
        job: LevelJob,
        members: list[Member],
        records: list[CandidateRecord],
        answers: list[ExtractedAnswer | None],
    ) -> tuple[CandidateRecord, dict[str, Any], str | None, str | None]:
        params = self.params
        assert isinstance(params, BlenderResponseParams)
        scorer = job.build_scorer(params.scorers or DEFAULT_SCORERS)
        n = len(records)
        wins, raw_sum = [0.0] * n, [0.0] * n
        for a, b in itertools.combinations(range(n), 2):
            combined, raw = scorer.score_texts(scoring_request(job, [records[a], records[b]]))
            raw_sum[a] += raw[0][scorer.names[0]]
            raw_sum[b] += raw[1][scorer.names[0]]
            if combined[0] == combined[1]:
                wins[a] += 0.5
                wins[b] += 0.5
            else:
                wins[a if combined[0] > combined[1] else b] += 1
        pairs_each = max(n - 1, 1)
        for i, record in enumerate(records):
            record.score = wins[i]
            record.raw_scores = {f"mean_{scorer.names[0]}": raw_sum[i] / pairs_each}
        order = sorted(range(n), key=lambda i: (wins[i], raw_sum[i]), reverse=True)
        summary: dict[str, Any] = {
            "ranking": [{"index": i, "model": records[i].member.name, "wins": wins[i]} for i in order],
            "comparisons": n * (n - 1) // 2,
            "scorers": list(scorer.names),
        }
        winner = records[order[0]]
        if params.fuser is None:
            return winner, summary, None, None
        top = [records[i] for i in order[: params.fuse_top_k]]
        fused, finish, tokens, fuser_name = self._fuse(job, top)
        summary.update(
            fused=True, fuser=fuser_name, fused_from=order[: params.fuse_top_k], fused_tokens=tokens
        )
        summary["written_by"] = fuser_name
        return winner, summary, fused, finish

    def _fuser_spec(self, job: LevelJob) -> tuple[str, ModelSpec, Sampling]:
        params = self.params
        assert isinstance(params, BlenderResponseParams)
        fuser = params.fuser
        if isinstance(fuser, str):
            for member in job.members:
                if member.name == fuser:
                    return member.name, member.spec, member.sampling
            spec = ModelSpec(path=fuser)
        elif isinstance(fuser, dict):
            spec = ModelSpec.model_validate(fuser)
        else:
            raise ConfigError("llm_blender: no fuser configured")
        temperature = job.request.temperature if job.request.temperature is not None else 0.0
        return (
            f"fuser:{spec.display_name}",
            spec,
            request_sampling(job.request, temperature, job.request.top_p or 1.0),
        )

    def _fuse(self, job: LevelJob, top: list[CandidateRecord]) -> tuple[str, str, int, str]:
        params = self.params
        assert isinstance(params, BlenderResponseParams)
        name, spec, sampling = self._fuser_spec(job)
        listing = "\n\n".join(f"[{i + 1}] {r.candidate.text.strip()}" for i, r in enumerate(top))
        messages = job.request.prompt_input().as_messages()  # the fuser reads an instruction
        last_user = (
            max(i for i, m in enumerate(messages) if m.role == "user")
            if any(m.role == "user" for m in messages)
            else None
        )
        instruction = params.fusion_instruction.replace("{candidates}", listing)
        if last_user is None:
            messages.append(ChatMessage(role="user", content=instruction))
        else:
            content = messages[last_user].content + "\n\n" + instruction
            messages[last_user] = ChatMessage(role="user", content=content)
        generator = job.pool.generator(spec)
        session = generator.open_session(
            PromptInput.chat(messages), style=spec.prompt_style(), seed=self.rng.randrange(2**31)
        )
        try:
            limits = segment_limits(job.request, max_new_tokens=job.request.max_tokens, boundary="none")
            candidate = session.generate("", [sampling], limits)[0]
        finally:
            usage = job.member_usage(name)
            usage.prompt = session.counters.prompt_tokens
            usage.prefilled += session.counters.prefilled
            usage.generated += session.counters.generated
            usage.forward_passes += session.counters.forward_passes
            session.close()
        return candidate.text, candidate.finish, candidate.num_tokens, name
