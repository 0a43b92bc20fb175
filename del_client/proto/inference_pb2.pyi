import importlib
_frames_pb2 = importlib.import_module(__package__ + '.frames_pb2')
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]

class SoftPrompt(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOFT_PROMPT_UNSPECIFIED: _ClassVar[SoftPrompt]
    SOFT_PROMPT_USED: _ClassVar[SoftPrompt]
    SOFT_PROMPT_NO_LEVEL: _ClassVar[SoftPrompt]
    SOFT_PROMPT_NOT_TRAINED: _ClassVar[SoftPrompt]
    SOFT_PROMPT_RAW: _ClassVar[SoftPrompt]
    SOFT_PROMPT_READER: _ClassVar[SoftPrompt]

class PromptReading(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_READING_UNSPECIFIED: _ClassVar[PromptReading]
    PROMPT_READING_FRONT_END: _ClassVar[PromptReading]
    PROMPT_READING_PARTICLE: _ClassVar[PromptReading]
    PROMPT_READING_IGNORED: _ClassVar[PromptReading]
    PROMPT_READING_RAW: _ClassVar[PromptReading]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_GENERATE: _ClassVar[Task]
    TASK_CLASSIFY: _ClassVar[Task]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_EOS: FinishReason
SOFT_PROMPT_UNSPECIFIED: SoftPrompt
SOFT_PROMPT_USED: SoftPrompt
SOFT_PROMPT_NO_LEVEL: SoftPrompt
SOFT_PROMPT_NOT_TRAINED: SoftPrompt
SOFT_PROMPT_RAW: SoftPrompt
SOFT_PROMPT_READER: SoftPrompt
PROMPT_READING_UNSPECIFIED: PromptReading
PROMPT_READING_FRONT_END: PromptReading
PROMPT_READING_PARTICLE: PromptReading
PROMPT_READING_IGNORED: PromptReading
PROMPT_READING_RAW: PromptReading
TASK_UNSPECIFIED: Task
TASK_GENERATE: Task
TASK_CLASSIFY: Task

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "max_new_tokens", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_new_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamHeader(_message.Message):
    __slots__ = ("request_id", "model", "mechanism", "sampling", "bundle_digest", "level_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LEVEL_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    mechanism: _frames_pb2.MechanismParams
    sampling: SamplingParams
    bundle_digest: str
    level_id: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., mechanism: _Optional[_Union[_frames_pb2.MechanismParams, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., bundle_digest: _Optional[str] = ..., level_id: _Optional[str] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("header", "frame", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    frame: _frames_pb2.Frame
    end: End
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., frame: _Optional[_Union[_frames_pb2.Frame, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "wire_bytes_received", "wire_bytes_sent", "payload_bits", "bits_per_token")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BITS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    wire_bytes_received: int
    wire_bytes_sent: int
    payload_bits: int
    bits_per_token: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., wire_bytes_received: _Optional[int] = ..., wire_bytes_sent: _Optional[int] = ..., payload_bits: _Optional[int] = ..., bits_per_token: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("time_to_first_token_s", "total_s")
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    time_to_first_token_s: float
    total_s: float
    def __init__(self, time_to_first_token_s: _Optional[float] = ..., total_s: _Optional[float] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("finish_reason", "usage", "timings", "soft_prompt_mu", "level_id", "soft_prompt", "reading")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SOFT_PROMPT_MU_FIELD_NUMBER: _ClassVar[int]
    LEVEL_ID_FIELD_NUMBER: _ClassVar[int]
    SOFT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    READING_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    soft_prompt_mu: float
    level_id: str
    soft_prompt: SoftPrompt
    reading: PromptReading
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., soft_prompt_mu: _Optional[float] = ..., level_id: _Optional[str] = ..., soft_prompt: _Optional[_Union[SoftPrompt, str]] = ..., reading: _Optional[_Union[PromptReading, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("tokens", "final")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    tokens: TokenChunk
    final: Final
    def __init__(self, tokens: _Optional[_Union[TokenChunk, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("header", "frame", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    frame: _frames_pb2.Frame
    end: End
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., frame: _Optional[_Union[_frames_pb2.Frame, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ...) -> None: ...

class LabelProbability(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("label", "probabilities", "usage", "timings", "level_id", "soft_prompt", "epsilon", "delta")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_ID_FIELD_NUMBER: _ClassVar[int]
    SOFT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    label: str
    probabilities: _containers.RepeatedCompositeFieldContainer[LabelProbability]
    usage: Usage
    timings: Timings
    level_id: str
    soft_prompt: SoftPrompt
    epsilon: float
    delta: float
    def __init__(self, label: _Optional[str] = ..., probabilities: _Optional[_Iterable[_Union[LabelProbability, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., level_id: _Optional[str] = ..., soft_prompt: _Optional[_Union[SoftPrompt, str]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "hidden_size", "projection_dim", "clip", "supported_bits", "soft_prompt_mus", "client_bundle_digest", "max_prompt_tokens", "max_new_tokens", "raw_mechanism_enabled", "raw_bundle_digest", "privacy_levels", "max_frames", "max_frame_payload_bytes", "level_tolerance", "bos_id", "task", "task_name", "labels", "payload_encodings", "prompt_reading", "reader_particles")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_DIM_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_BITS_FIELD_NUMBER: _ClassVar[int]
    SOFT_PROMPT_MUS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RAW_MECHANISM_ENABLED_FIELD_NUMBER: _ClassVar[int]
    RAW_BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LEVELS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEVEL_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    BOS_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_READING_FIELD_NUMBER: _ClassVar[int]
    READER_PARTICLES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    hidden_size: int
    projection_dim: int
    clip: float
    supported_bits: _containers.RepeatedScalarFieldContainer[int]
    soft_prompt_mus: _containers.RepeatedScalarFieldContainer[float]
    client_bundle_digest: str
    max_prompt_tokens: int
    max_new_tokens: int
    raw_mechanism_enabled: bool
    raw_bundle_digest: str
    privacy_levels: _containers.RepeatedCompositeFieldContainer[PrivacyLevel]
    max_frames: int
    max_frame_payload_bytes: int
    level_tolerance: float
    bos_id: int
    task: Task
    task_name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    payload_encodings: _containers.RepeatedScalarFieldContainer[_frames_pb2.PayloadEncoding]
    prompt_reading: PromptReading
    reader_particles: int
    def __init__(self, model_id: _Optional[str] = ..., hidden_size: _Optional[int] = ..., projection_dim: _Optional[int] = ..., clip: _Optional[float] = ..., supported_bits: _Optional[_Iterable[int]] = ..., soft_prompt_mus: _Optional[_Iterable[float]] = ..., client_bundle_digest: _Optional[str] = ..., max_prompt_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., raw_mechanism_enabled: _Optional[bool] = ..., raw_bundle_digest: _Optional[str] = ..., privacy_levels: _Optional[_Iterable[_Union[PrivacyLevel, _Mapping]]] = ..., max_frames: _Optional[int] = ..., max_frame_payload_bytes: _Optional[int] = ..., level_tolerance: _Optional[float] = ..., bos_id: _Optional[int] = ..., task: _Optional[_Union[Task, str]] = ..., task_name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., payload_encodings: _Optional[_Iterable[_Union[_frames_pb2.PayloadEncoding, str]]] = ..., prompt_reading: _Optional[_Union[PromptReading, str]] = ..., reader_particles: _Optional[int] = ...) -> None: ...

class PrivacyLevel(_message.Message):
    __slots__ = ("id", "scale", "clip", "dim", "mu", "epsilon_token", "delta", "bits", "target_attack_rate", "nearest_neighbour_rate", "likelihood_rate", "soft_prompt", "learned_rate", "attack", "attacks", "strongest_attack", "strongest_rate", "strongest_rate_high", "prior_alone_rate", "measured_on", "measured_tokens", "measured_prompts", "utility", "ignore_probability")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    EPSILON_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ATTACK_RATE_FIELD_NUMBER: _ClassVar[int]
    NEAREST_NEIGHBOUR_RATE_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_RATE_FIELD_NUMBER: _ClassVar[int]
    SOFT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LEARNED_RATE_FIELD_NUMBER: _ClassVar[int]
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    ATTACKS_FIELD_NUMBER: _ClassVar[int]
    STRONGEST_ATTACK_FIELD_NUMBER: _ClassVar[int]
    STRONGEST_RATE_FIELD_NUMBER: _ClassVar[int]
    STRONGEST_RATE_HIGH_FIELD_NUMBER: _ClassVar[int]
    PRIOR_ALONE_RATE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_ON_FIELD_NUMBER: _ClassVar[int]
    MEASURED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FIELD_NUMBER: _ClassVar[int]
    IGNORE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    scale: float
    clip: float
    dim: int
    mu: float
    epsilon_token: float
    delta: float
    bits: int
    target_attack_rate: float
    nearest_neighbour_rate: float
    likelihood_rate: float
    soft_prompt: bool
    learned_rate: float
    attack: str
    attacks: _containers.RepeatedCompositeFieldContainer[AttackRate]
    strongest_attack: str
    strongest_rate: float
    strongest_rate_high: float
    prior_alone_rate: float
    measured_on: str
    measured_tokens: int
    measured_prompts: int
    utility: LevelUtility
    ignore_probability: float
    def __init__(self, id: _Optional[str] = ..., scale: _Optional[float] = ..., clip: _Optional[float] = ..., dim: _Optional[int] = ..., mu: _Optional[float] = ..., epsilon_token: _Optional[float] = ..., delta: _Optional[float] = ..., bits: _Optional[int] = ..., target_attack_rate: _Optional[float] = ..., nearest_neighbour_rate: _Optional[float] = ..., likelihood_rate: _Optional[float] = ..., soft_prompt: _Optional[bool] = ..., learned_rate: _Optional[float] = ..., attack: _Optional[str] = ..., attacks: _Optional[_Iterable[_Union[AttackRate, _Mapping]]] = ..., strongest_attack: _Optional[str] = ..., strongest_rate: _Optional[float] = ..., strongest_rate_high: _Optional[float] = ..., prior_alone_rate: _Optional[float] = ..., measured_on: _Optional[str] = ..., measured_tokens: _Optional[int] = ..., measured_prompts: _Optional[int] = ..., utility: _Optional[_Union[LevelUtility, _Mapping]] = ..., ignore_probability: _Optional[float] = ...) -> None: ...

class LevelUtility(_message.Message):
    __slots__ = ("metric", "value", "nothing_sent", "higher_is_better", "better_than_nothing", "measured_on", "margin")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NOTHING_SENT_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    BETTER_THAN_NOTHING_FIELD_NUMBER: _ClassVar[int]
    MEASURED_ON_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    nothing_sent: float
    higher_is_better: bool
    better_than_nothing: bool
    measured_on: str
    margin: float
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., nothing_sent: _Optional[float] = ..., higher_is_better: _Optional[bool] = ..., better_than_nothing: _Optional[bool] = ..., measured_on: _Optional[str] = ..., margin: _Optional[float] = ...) -> None: ...

class AttackRate(_message.Message):
    __slots__ = ("attack", "rate", "low", "high", "content_rate", "half_prompts", "exact_prompts")
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_RATE_FIELD_NUMBER: _ClassVar[int]
    HALF_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    EXACT_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    attack: str
    rate: float
    low: float
    high: float
    content_rate: float
    half_prompts: float
    exact_prompts: float
    def __init__(self, attack: _Optional[str] = ..., rate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., content_rate: _Optional[float] = ..., half_prompts: _Optional[float] = ..., exact_prompts: _Optional[float] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("server_version", "models")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, server_version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class FetchClientBundleRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("data", "offset", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...
