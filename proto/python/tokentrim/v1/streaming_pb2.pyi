from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_JPEG: _ClassVar[Encoding]
    ENCODING_RAW_RGB: _ClassVar[Encoding]
    ENCODING_LATENTS: _ClassVar[Encoding]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_COMPLETED: _ClassVar[EndReason]
    END_REASON_STOPPED: _ClassVar[EndReason]
    END_REASON_LENGTH_LIMIT: _ClassVar[EndReason]
ENCODING_UNSPECIFIED: Encoding
ENCODING_JPEG: Encoding
ENCODING_RAW_RGB: Encoding
ENCODING_LATENTS: Encoding
END_REASON_UNSPECIFIED: EndReason
END_REASON_COMPLETED: EndReason
END_REASON_STOPPED: EndReason
END_REASON_LENGTH_LIMIT: EndReason

class GenerateRequest(_message.Message):
    __slots__ = ("start", "change_prompt", "grant_credits", "stop", "resume")
    START_FIELD_NUMBER: _ClassVar[int]
    CHANGE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    GRANT_CREDITS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    start: StartSession
    change_prompt: ChangePrompt
    grant_credits: GrantCredits
    stop: StopSession
    resume: ResumeSession
    def __init__(self, start: _Optional[_Union[StartSession, _Mapping]] = ..., change_prompt: _Optional[_Union[ChangePrompt, _Mapping]] = ..., grant_credits: _Optional[_Union[GrantCredits, _Mapping]] = ..., stop: _Optional[_Union[StopSession, _Mapping]] = ..., resume: _Optional[_Union[ResumeSession, _Mapping]] = ...) -> None: ...

class ResumeSession(_message.Message):
    __slots__ = ("token", "last_chunk_index", "initial_credits")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CREDITS_FIELD_NUMBER: _ClassVar[int]
    token: str
    last_chunk_index: int
    initial_credits: int
    def __init__(self, token: _Optional[str] = ..., last_chunk_index: _Optional[int] = ..., initial_credits: _Optional[int] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("prompt", "seed", "pipeline", "pipeline_options", "chunks", "height", "width", "cache_policy", "session_hooks", "output", "initial_credits")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    SESSION_HOOKS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CREDITS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    seed: int
    pipeline: str
    pipeline_options: _struct_pb2.Struct
    chunks: int
    height: int
    width: int
    cache_policy: PluginConfig
    session_hooks: _containers.RepeatedCompositeFieldContainer[PluginConfig]
    output: OutputFormat
    initial_credits: int
    def __init__(self, prompt: _Optional[str] = ..., seed: _Optional[int] = ..., pipeline: _Optional[str] = ..., pipeline_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., chunks: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., cache_policy: _Optional[_Union[PluginConfig, _Mapping]] = ..., session_hooks: _Optional[_Iterable[_Union[PluginConfig, _Mapping]]] = ..., output: _Optional[_Union[OutputFormat, _Mapping]] = ..., initial_credits: _Optional[int] = ...) -> None: ...

class PluginConfig(_message.Message):
    __slots__ = ("name", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class OutputFormat(_message.Message):
    __slots__ = ("encoding", "jpeg_quality")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    encoding: Encoding
    jpeg_quality: int
    def __init__(self, encoding: _Optional[_Union[Encoding, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class ChangePrompt(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    def __init__(self, prompt: _Optional[str] = ...) -> None: ...

class GrantCredits(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: int
    def __init__(self, chunks: _Optional[int] = ...) -> None: ...

class StopSession(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("started", "chunk", "ended")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    chunk: Chunk
    ended: SessionEnded
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., ended: _Optional[_Union[SessionEnded, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "model", "pipeline", "height", "width", "frames_per_second", "seed", "chunks", "cache_policy", "session_hooks", "credits", "cache_budget_bytes", "resume_token", "resumed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    SESSION_HOOKS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    pipeline: str
    height: int
    width: int
    frames_per_second: float
    seed: int
    chunks: int
    cache_policy: str
    session_hooks: _containers.RepeatedScalarFieldContainer[str]
    credits: int
    cache_budget_bytes: int
    resume_token: str
    resumed: bool
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., pipeline: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., frames_per_second: _Optional[float] = ..., seed: _Optional[int] = ..., chunks: _Optional[int] = ..., cache_policy: _Optional[str] = ..., session_hooks: _Optional[_Iterable[str]] = ..., credits: _Optional[int] = ..., cache_budget_bytes: _Optional[int] = ..., resume_token: _Optional[str] = ..., resumed: _Optional[bool] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "first_frame", "frame_count", "encoding", "jpeg_frames", "rgb", "latents", "timings", "cache_report", "prompt_version", "hook_reports", "slack_seconds")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_FRAMES_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_REPORT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOOK_REPORTS_FIELD_NUMBER: _ClassVar[int]
    SLACK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    first_frame: int
    frame_count: int
    encoding: Encoding
    jpeg_frames: _containers.RepeatedScalarFieldContainer[bytes]
    rgb: bytes
    latents: Tensor
    timings: ChunkTimings
    cache_report: CacheReport
    prompt_version: int
    hook_reports: _containers.RepeatedCompositeFieldContainer[HookReport]
    slack_seconds: float
    def __init__(self, index: _Optional[int] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., jpeg_frames: _Optional[_Iterable[bytes]] = ..., rgb: _Optional[bytes] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., timings: _Optional[_Union[ChunkTimings, _Mapping]] = ..., cache_report: _Optional[_Union[CacheReport, _Mapping]] = ..., prompt_version: _Optional[int] = ..., hook_reports: _Optional[_Iterable[_Union[HookReport, _Mapping]]] = ..., slack_seconds: _Optional[float] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChunkTimings(_message.Message):
    __slots__ = ("queue_wait_seconds", "denoise_seconds", "decode_seconds", "encode_seconds", "prompt_change_seconds")
    QUEUE_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DENOISE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CHANGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_wait_seconds: float
    denoise_seconds: float
    decode_seconds: float
    encode_seconds: float
    prompt_change_seconds: float
    def __init__(self, queue_wait_seconds: _Optional[float] = ..., denoise_seconds: _Optional[float] = ..., decode_seconds: _Optional[float] = ..., encode_seconds: _Optional[float] = ..., prompt_change_seconds: _Optional[float] = ...) -> None: ...

class CacheReport(_message.Message):
    __slots__ = ("policy", "severity", "threshold", "triggered", "regenerations", "tokens_removed", "cache_tokens_before", "cache_tokens_after", "cache_bytes_before", "cache_bytes_after", "policy_seconds")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TRIGGERED_FIELD_NUMBER: _ClassVar[int]
    REGENERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    CACHE_TOKENS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CACHE_TOKENS_AFTER_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_AFTER_FIELD_NUMBER: _ClassVar[int]
    POLICY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    severity: float
    threshold: float
    triggered: bool
    regenerations: int
    tokens_removed: int
    cache_tokens_before: int
    cache_tokens_after: int
    cache_bytes_before: int
    cache_bytes_after: int
    policy_seconds: float
    def __init__(self, policy: _Optional[str] = ..., severity: _Optional[float] = ..., threshold: _Optional[float] = ..., triggered: _Optional[bool] = ..., regenerations: _Optional[int] = ..., tokens_removed: _Optional[int] = ..., cache_tokens_before: _Optional[int] = ..., cache_tokens_after: _Optional[int] = ..., cache_bytes_before: _Optional[int] = ..., cache_bytes_after: _Optional[int] = ..., policy_seconds: _Optional[float] = ...) -> None: ...

class HookReport(_message.Message):
    __slots__ = ("name", "seconds", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    seconds: float
    values: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., seconds: _Optional[float] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SessionEnded(_message.Message):
    __slots__ = ("reason", "message", "chunks", "frames")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    reason: EndReason
    message: str
    chunks: int
    frames: int
    def __init__(self, reason: _Optional[_Union[EndReason, str]] = ..., message: _Optional[str] = ..., chunks: _Optional[int] = ..., frames: _Optional[int] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("model", "versions", "pipelines", "default_pipeline", "cache_policies", "default_cache_policy", "session_hooks", "limits", "frames_per_second", "default_height", "default_width")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PIPELINE_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    SESSION_HOOKS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.ScalarMap[str, str]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    default_pipeline: str
    cache_policies: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    default_cache_policy: str
    session_hooks: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    limits: Limits
    frames_per_second: float
    default_height: int
    default_width: int
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ..., default_pipeline: _Optional[str] = ..., cache_policies: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ..., default_cache_policy: _Optional[str] = ..., session_hooks: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., frames_per_second: _Optional[float] = ..., default_height: _Optional[int] = ..., default_width: _Optional[int] = ...) -> None: ...

class PipelineInfo(_message.Message):
    __slots__ = ("name", "default_options", "options_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_options: _struct_pb2.Struct
    options_schema: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., default_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., options_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class PluginInfo(_message.Message):
    __slots__ = ("name", "description", "parameters", "parameters_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _struct_pb2.ListValue
    parameters_schema: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., parameters_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_sessions", "cache_budget_bytes", "max_prompt_chars", "max_chunks", "max_height", "max_width", "size_multiple", "default_credits", "max_credits", "max_session_hooks", "max_message_bytes", "max_denoising_steps", "max_hook_iterations", "idle_timeout_seconds", "resume_hold_seconds", "replay_chunks")
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SIZE_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CREDITS_FIELD_NUMBER: _ClassVar[int]
    MAX_CREDITS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_HOOKS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DENOISING_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_HOOK_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    max_sessions: int
    cache_budget_bytes: int
    max_prompt_chars: int
    max_chunks: int
    max_height: int
    max_width: int
    size_multiple: int
    default_credits: int
    max_credits: int
    max_session_hooks: int
    max_message_bytes: int
    max_denoising_steps: int
    max_hook_iterations: int
    idle_timeout_seconds: float
    resume_hold_seconds: float
    replay_chunks: int
    def __init__(self, max_sessions: _Optional[int] = ..., cache_budget_bytes: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_chunks: _Optional[int] = ..., max_height: _Optional[int] = ..., max_width: _Optional[int] = ..., size_multiple: _Optional[int] = ..., default_credits: _Optional[int] = ..., max_credits: _Optional[int] = ..., max_session_hooks: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_denoising_steps: _Optional[int] = ..., max_hook_iterations: _Optional[int] = ..., idle_timeout_seconds: _Optional[float] = ..., resume_hold_seconds: _Optional[float] = ..., replay_chunks: _Optional[int] = ...) -> None: ...
