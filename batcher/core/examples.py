"""The prefix every row's request shares, settled once a run before anything is sent: the few-shot
examples (``[[request.examples]]``) checked and their images prepared exactly as a row's are, the
prefix's tokens, and the cache decision (:mod:`batcher.core.cache`) that places the one breakpoint.

Both drivers get the result as a :class:`~batcher.core.plan.SharedPrefix`; ``batcher estimate``
shares the pure parts (:func:`example_answers`, :func:`prefix_tokens`, :func:`decide_for_job`).
A bad example (an answer that does not fit the schema, an image that cannot be prepared) stops the
run before anything is sent, in one line naming ``request.examples[N]...`` (exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batcher.api.bodies import Example, StructuredRequest, messages_body
from batcher.config import ConfigError, ExampleConfig, JobConfig, example_key
from batcher.core.cache import CacheDecision, decide_cache, resolve_ttl
from batcher.core.plan import SharedPrefix, job_image_options, settings_for, unsized_image_tokens
from batcher.errors import JobError
from batcher.exits import EXIT_FATAL
from batcher.models import ModelProfile
from batcher.records import Row
from batcher.tokens import estimate_body_tokens

if TYPE_CHECKING:
    from batcher.core.prepare import RowPreparer
    from batcher.core.structured import StructuredOutput
    from batcher.output import OutputSpec


class ExampleError(ConfigError):
    """An example that cannot be sent (exit 2): the message names ``request.examples[N]...``."""


class ExampleUploadError(JobError):
    """An example image that could not be uploaded to the Files API this time (exit 1: a rerun
    may succeed)."""

    exit_code = EXIT_FATAL


def example_answers(job: JobConfig, spec: OutputSpec | None) -> list[str]:
    """Each example's answer as sent. Without ``[output]``, its text (config refused a table).
    With it, the table (or a string holding JSON) checked against the schema as an answer is,
    and sent as compact JSON; one that does not fit is an :class:`ExampleError` naming the example
    and the JSON path."""
    import orjson

    answers: list[str] = []
    for n, example in enumerate(job.request.examples):
        answer = example.answer
        if spec is None:
            if not isinstance(answer, str):
                raise ExampleError(f"{job.path}: {example_key(n, 'answer')}: a table answer needs [output]")
            answers.append(answer)
            continue
        text = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
        checked = spec.check(text)
        if checked.data is None:
            raise ExampleError(
                f"{job.path}: {example_key(n, 'answer')}: does not fit [output]'s schema: {checked.problem}"
            )
        answers.append(orjson.dumps(checked.data).decode())
    return answers


@dataclass(frozen=True, slots=True)
class PreparedExamples:
    """The examples as sent, and the tokens of each of their images, in body order."""

    examples: tuple[Example, ...]
    image_tokens: tuple[int, ...]


NO_EXAMPLES = PreparedExamples((), ())


def example_row(n: int, example: ExampleConfig) -> Row:
    """The ``n``-th example as a row the :class:`RowPreparer` prepares like any other."""
    assert example.prompt is not None, "load_job gives every example its prompt"
    return Row(id=f"example-{n}", images=example.image_list, prompt=example.prompt, fields={}, index=-1 - n)


async def prepare_examples(
    job: JobConfig, profile: ModelProfile, preparer: RowPreparer, answers: Sequence[str]
) -> PreparedExamples:
    """Every example image through the job's :class:`RowPreparer` (native size, EXIF, the job's
    transport: base64, one upload through the Files API, or the URL), once. An image that cannot
    be prepared is an :class:`ExampleError` naming ``request.examples[N].image``."""
    from batcher.core.prepare import RowFailed
    from batcher.errors import UPLOAD_FAILED

    unsized = unsized_image_tokens(profile, job_image_options(job))
    examples: list[Example] = []
    tokens: list[int] = []
    total = sum(len(config.image_list) for config in job.request.examples)
    own = preparer.shared_images
    for n, config in enumerate(job.request.examples):
        row = example_row(n, config)
        # Sized for the least a request holds: every example's images and one of the row's.
        preparer.shared_images = total - len(row.images) + 1
        try:
            prepared = await preparer.prepare_row(row)
        except RowFailed as exc:
            failure = exc.failure
            index = failure.image_index or 1
            key = "image" if config.image is not None else f"images[{index - 1}]"
            message = f"{job.path}: {example_key(n, key)}: {failure.message}"
            if failure.error_type == UPLOAD_FAILED:
                raise ExampleUploadError(f"{message}; nothing was sent") from None
            raise ExampleError(message) from None
        finally:
            preparer.shared_images = own
        examples.append(Example(images=tuple(prepared.parts), prompt=row.prompt, answer=answers[n]))
        tokens.extend(s.tokens if s.tokens is not None else unsized for s in prepared.sent)
    return PreparedExamples(tuple(examples), tuple(tokens))


def prefix_body(
    job: JobConfig, profile: ModelProfile, structured: StructuredRequest | None, examples: Sequence[Example]
) -> dict[str, Any]:
    """A body holding only what every row's request shares: the tools or the schema, the system
    prompt, the example turns, and (with a structured tool and examples) the ``tool_result`` that
    opens the row's own turn; the row's own images and prompt left out."""
    body = messages_body(profile, settings_for(job), [], "", structured, examples=examples)
    own = body["messages"][-1]["content"]
    shared = [block for block in own if block.get("type") == "tool_result"]
    if shared:
        body["messages"][-1]["content"] = shared
    else:
        body["messages"].pop()
    return body


def prefix_tokens(
    job: JobConfig,
    profile: ModelProfile,
    structured: StructuredRequest | None,
    prepared: PreparedExamples,
) -> int:
    """Estimated input tokens of the shared prefix, counted as the planner counts a row's (text
    by :mod:`batcher.tokens`, each example image at its exact tokens)."""
    body = prefix_body(job, profile, structured, prepared.examples)
    text, images = estimate_body_tokens(body, profile, lambda n, _block: prepared.image_tokens[n])
    return text + images


def decide_for_job(job: JobConfig, profile: ModelProfile, tokens: int, *, batch: bool) -> CacheDecision:
    """The job's ``[cache]`` decision for a prefix of ``tokens`` in the mode it runs in."""
    return decide_cache(
        job.cache.mode,
        resolve_ttl(job.cache.ttl, batch=batch),
        model=profile.id,
        prefix_tokens=tokens,
        min_tokens=profile.min_cacheable_tokens,
        has_examples=bool(job.request.examples),
        has_system=bool(job.request.system),
    )


async def settle_prefix(
    job: JobConfig,
    profile: ModelProfile,
    preparer: RowPreparer,
    output: StructuredOutput | None,
    *,
    batch: bool,
) -> tuple[SharedPrefix, CacheDecision]:
    """The run's :class:`SharedPrefix` and the cache decision behind it (its ``reason`` is the
    line the run says once). Raises :class:`ExampleError` / :class:`ExampleUploadError`."""
    structured = output.request if output is not None else None
    answers = example_answers(job, output.spec if output is not None else None)
    prepared = await prepare_examples(job, profile, preparer, answers) if answers else NO_EXAMPLES
    tokens = prefix_tokens(job, profile, structured, prepared)
    decision = decide_for_job(job, profile, tokens, batch=batch)
    return SharedPrefix(prepared.examples, decision.point, prepared.image_tokens), decision


def decision_line(decision: CacheDecision) -> str:
    """The decision as the run says it: ``batcher: cache: ...``."""
    return f"batcher: {decision.reason}"
