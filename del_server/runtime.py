"""Everything the service needs for one model, built once from Settings at start-up.

A causal LM is served by the generation engine; an encoder whose adapter carries a
classification task, by the classification batcher. A server serves one model, so one task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from del_client.bundle import ClientBundle

from .adapter import Adapter, pca_adapter
from .backends.transformers import TransformersBackend
from .bundles import client_bundle, raw_bundle
from .classification import EncoderClassifier
from .classify_batcher import ClassifyBatcher
from .engine_process import EngineSpec, ProcessEngine
from .errors import InputError
from .front_end import front_end_of
from .generation import Engine, PromptBuilder
from .levels import Level, adapter_levels
from .models import LoadedModel, load_model
from .particle_reader import ParticleReader
from .settings import SettingError, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ServedModel:
    loaded: LoadedModel
    adapter: Adapter
    bundle: ClientBundle
    raw_bundle: ClientBundle | None
    engine: Engine | ProcessEngine | None  # generation: a causal LM
    prompts: PromptBuilder | None
    levels: tuple[Level, ...] = ()  # adapter_levels(adapter): what a request may be served at
    classifier: ClassifyBatcher | None = None  # classification: an encoder and its task

    @property
    def task(self) -> str:
        return "classify" if self.classifier is not None else "generate"

    @property
    def bundles(self) -> dict[str, ClientBundle]:
        """Published bundles by digest."""
        found = [self.bundle] + ([self.raw_bundle] if self.raw_bundle else [])
        return {b.digest: b for b in found}


def load_adapter(settings: Settings, loaded: LoadedModel) -> Adapter:
    if settings.adapter is None:
        try:
            return pca_adapter(loaded.embeddings, dim=settings.projection_dim)
        except InputError as error:
            why = str(error)  # the lambda runs after the except block has unbound `error`
            raise SettingError(lambda n: f"{n('projection_dim')}: {why}") from None
    adapter = Adapter.load(settings.adapter)
    if not adapter.fits(loaded.embeddings):
        raise SettingError(
            lambda n: (
                f"{n('adapter')} {settings.adapter} was built for another model's "
                f"embeddings than {n('model')} {settings.model}'s"
            )
        )
    return adapter


def build_served_model(settings: Settings) -> ServedModel:
    loaded = load_model(
        settings.model, format=settings.model_format, dtype=getattr(torch, settings.dtype.value)
    )
    adapter = load_adapter(settings, loaded)
    levels = adapter_levels(adapter)
    bundle = client_bundle(loaded, adapter)
    raw = raw_bundle(loaded) if settings.enable_raw else None
    if loaded.is_encoder:
        return _classification(loaded, adapter, bundle, raw, levels, settings)
    if adapter.task is not None:
        raise SettingError(
            lambda n: (
                f"{n('adapter')} {settings.adapter} classifies ({adapter.task.name}), but "
                f"{loaded.model_id} is a causal LM: serve it with the encoder it was trained for"
            )
        )
    backend = TransformersBackend(loaded.model)
    anchor = loaded.tokenizer.encode("a", add_special_tokens=False).ids[-1]
    if settings.engine_process:
        engine = ProcessEngine(
            EngineSpec(
                model=settings.model,
                model_format=settings.model_format,
                dtype=settings.dtype.value,
                max_running=settings.max_running,
                max_waiting=settings.max_waiting,
                stream_interval_s=settings.stream_interval_ms / 1000,
                join_wait_s=settings.join_wait_ms / 1000,
                threads=torch.get_num_threads(),
                log_level=settings.log_level,
            )
        )
    else:
        engine = Engine(
            backend,
            loaded.tokenizer,
            eos_id=loaded.eos_id,
            anchor_id=anchor,
            max_running=settings.max_running,
            max_waiting=settings.max_waiting,
            stream_interval_s=settings.stream_interval_ms / 1000,
            join_wait_s=settings.join_wait_ms / 1000,
        )
    front_end = front_end_of(adapter, loaded.embeddings)
    served = ServedModel(
        loaded=loaded,
        adapter=adapter,
        bundle=bundle,
        raw_bundle=raw,
        engine=engine,
        prompts=PromptBuilder(
            backend,
            adapter,
            loaded.bos_id,
            front_end,
            ParticleReader.of(adapter, loaded.model, loaded.bos_id, front_end),
        ),
        levels=levels,
    )
    _log_ready(served)
    return served


def _classification(loaded, adapter, bundle, raw, levels, settings: Settings) -> ServedModel:
    if adapter.task is None:
        raise SettingError(
            lambda n: (
                f"{loaded.model_id} is an encoder: it classifies, with an adapter trained "
                f"for a task ({n('adapter')} DIR written by `del-server train classify`)"
            )
        )
    if settings.engine_process:
        raise SettingError(
            lambda n: (
                f"{loaded.model_id} classifies: {n('engine_process')} runs the generation "
                "engine, which a classifier has none of (its forward passes already run off the "
                "event loop)"
            )
        )
    classifier = EncoderClassifier(
        loaded.model, adapter, cls_id=loaded.cls_id, sep_id=loaded.sep_id
    )
    served = ServedModel(
        loaded=loaded,
        adapter=adapter,
        bundle=bundle,
        raw_bundle=raw,
        engine=None,
        prompts=None,
        levels=levels,
        classifier=ClassifyBatcher(classifier, max_batch=settings.max_running),
    )
    _log_ready(served)
    return served


def _log_ready(served: ServedModel) -> None:
    log.info(
        "model ready",
        extra={
            "model_id": served.loaded.model_id,
            "task": served.task,
            "projection_dim": served.adapter.projection_dim,
            "bundle_digest": served.bundle.digest,
        },
    )
