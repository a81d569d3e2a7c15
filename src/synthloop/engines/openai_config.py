"""The settings of an OpenAI-compatible endpoint and of sampling from it: one spec for Python and YAML.

Nothing here imports ``openai``: a config is validated (and a run planned) without it. The API key
is never a setting: the config names the environment variable that holds it (``api_key_env``), so
the resolved config a run writes into its directory cannot contain it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from synthloop.strict import Count, Strict

BASE_URL_ENV = ("SYNTHLOOP_OPENAI_BASE_URL", "OPENAI_BASE_URL")
NO_KEY = "no-key"  # local servers (llama.cpp, vLLM without --api-key) accept any key

Seconds = Annotated[float, Field(gt=0, le=24 * 3600)]


class OpenAISettings(Strict):
    """How to reach the server, what to ask it, and how hard to try.

    ``base_url``: e.g. ``http://127.0.0.1:8000/v1``; unset, ``$SYNTHLOOP_OPENAI_BASE_URL`` then
    ``$OPENAI_BASE_URL``. ``api_key_env``: the variable holding the key (unset or empty: no key).
    ``n``: at most this many identical prompts of a part share one request asking for ``n`` choices
    (servers that ignore ``n``, such as llama.cpp's, need ``n: 1``). ``seed_honoured``: whether the
    server reproduces a sample from its seed; unset, a two-request probe decides when the run starts.
    ``template_tokens``: the most tokens a chat template (or a BOS token) adds to a prompt; the
    per-draw bound on prompt tokens is the prompt's UTF-8 bytes plus this (a token covers at least one
    byte of text).
    """

    model: Annotated[str, Field(min_length=1, max_length=500)]
    base_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2000)] | None = None
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)] = "OPENAI_API_KEY"
    api: Literal["completions", "chat"] | None = None  # unset: the family's choice (chat for chat prompts)
    system: Annotated[str, Field(max_length=100_000)] | None = None  # a system turn (chat only)
    max_tokens: Count = 64
    temperature: Annotated[float, Field(ge=0, le=10)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: tuple[str, ...] = ()
    n: Annotated[int, Field(ge=1, le=128)] = 1
    logprobs: bool = False  # also keep each completion's summed log-probability (extra column ``logprob``)
    seed_honoured: bool | None = None
    template_tokens: Annotated[int, Field(ge=0, le=100_000)] = 64
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    timeout: Seconds = 60.0  # per request attempt
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    backoff: Annotated[float, Field(ge=0, le=600)] = 0.5  # first wait; it doubles each retry
    max_backoff: Annotated[float, Field(ge=0, le=3600)] = 30.0


@dataclass(frozen=True)
class Connection:
    """Where to send requests and with which key, resolved once at the config edge.

    The key lives only in memory: it is left out of ``repr`` and is never written anywhere.
    """

    base_url: str
    api_key: str = field(default=NO_KEY, repr=False)


def resolve_connection(settings: OpenAISettings, environ: Mapping[str, str] | None = None) -> Connection:
    """The base URL (the setting, else the environment) and the key (from ``settings.api_key_env``).

    >>> resolve_connection(OpenAISettings(model="m"), {"OPENAI_BASE_URL": "http://h:1/v1", "OPENAI_API_KEY": "k"})
    Connection(base_url='http://h:1/v1')
    """
    env = os.environ if environ is None else environ
    url = settings.base_url or next((env[name] for name in BASE_URL_ENV if env.get(name)), None)
    if not url:
        raise ValueError(f"generator.base_url: not set, and neither is ${' nor $'.join(BASE_URL_ENV)}; "
                         "give the server's address, e.g. http://127.0.0.1:8000/v1")
    return Connection(base_url=url, api_key=env.get(settings.api_key_env) or NO_KEY)
