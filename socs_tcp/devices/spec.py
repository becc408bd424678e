"""The device-file model and its loader.

A device file is YAML.  :func:`load` reads it with ``yaml.compose`` (so every
node keeps its line), checks every key against the format, and builds a
:class:`DeviceSpec`.  Nothing is ignored: an unknown key, a wrong type, an
unknown reference or a contradiction is a :class:`DeviceFileProblem` naming
the file, the line and the dotted key, and all problems of a file are
reported together in one :class:`DeviceFileError`.

The model is plain data (dataclasses); the driver
(:mod:`socs_tcp.devices.driver`), the simulator, the agent and the generators
all read the same objects.  The format itself is described key by key in
``docs/devices/format.rst``.
"""

import dataclasses
import math
import pathlib
import re
import string

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from ..core.checksums import CHECKSUMS, checksum_size
from .errors import DeviceFileError, DeviceFileProblem

__all__ = [
    "load", "find", "list_devices", "files_dir",
    "DeviceSpec", "ConnectionSpec", "OperationSpec", "ArgSpec", "FieldSpec", "ReplySpec", "ArraySpec",
    "StatusSpec", "SimSpec", "Step", "TransactionSpec", "ReplyErrorSpec", "ErrorQueueSpec", "ModbusSpec",
    "RequestItem", "ChecksumSpec", "LengthSpec", "GuardSpec", "GuardCheck", "PollSpec", "PollItem", "AgentSpec",
    "TaskSpec", "REQUIRED",
    "ARG_TYPES", "FIELD_TYPES", "WIRE_TYPES", "BYTE_ORDERS", "param_assignments",
]


class _Required:
    def __repr__(self):
        return "REQUIRED"


#: default of an argument that must be given
REQUIRED = _Required()

ARG_TYPES = ("int", "float", "str", "bool", "enum")
FIELD_TYPES = ("float", "int", "str", "bool")
#: binary encodings: name -> (size in bytes, struct code)
WIRE_TYPES = {
    "u8": (1, "B"), "i8": (1, "b"), "u16": (2, "H"), "i16": (2, "h"), "u32": (4, "I"), "i32": (4, "i"),
    "u64": (8, "Q"), "i64": (8, "q"), "f32": (4, "f"), "f64": (8, "d"),
}
#: byte orders of multi-byte values: big (ABCD), little (DCBA), word-swapped big (CDAB), byte-swapped words (BADC)
BYTE_ORDERS = ("big", "little", "ABCD", "DCBA", "CDAB", "BADC")
PROTOCOLS = ("text", "binary", "modbus")
STALE_INPUT = ("drain", "keep", "close")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
#: a typed escape sequence left in a terminator (single-quoted '\r\n' is four characters)
_ESCAPE_TYPED = re.compile(r"\\([rntx0])")
#: public attributes of the driver (socs_tcp.devices.Device): an operation may not take one of these names,
#: or its method would be hidden (a test keeps this list equal to the class's)
RESERVED_NAMES = frozenset((
    "call", "close", "connect", "disconnect", "drain", "expect", "from_address", "from_file", "is_connected",
    "next_attempt_in", "operation", "parse", "parse_address", "poll", "query", "read", "read_bin", "read_bin_until",
    "read_bytes", "read_until", "readinto", "reconnect", "recv", "send", "stats", "transact", "write", "write_bin",
    "wrnrd", "wrnrd_bin", "wrnrd_bin_until", "wrnrd_until", "spec", "comm", "lock", "timeout", "port", "ip_address",
    "name", "encoding", "family", "keepalive", "nodelay", "rstrip", "buffer_size", "max_read_size",
    "read_termination", "write_termination", "reconnect_policy", "drain_before_query", "close_on_timeout",
    "connect_timeout", "encoding_errors", "spin_wait",
))

_DIR = pathlib.Path(__file__).resolve().parent / "files"


def files_dir():
    """The folder of the shipped device files."""
    return _DIR


# ----------------------------------------------------------------------
# the model

@dataclasses.dataclass
class ArgSpec:
    """One argument of an operation."""

    name: str
    type: str
    default: object = REQUIRED
    min: float = None
    max: float = None
    #: enum keys (what callers pass), in order
    choices: list = None
    #: enum key -> text (or number) sent to the device
    values: dict = None
    unit: str = None
    description: str = ""
    #: Python format spec applied to the value on the wire (text protocol), e.g. ``.3f``
    format: str = None
    true_text: str = "1"
    false_text: str = "0"
    max_length: int = None
    pattern: str = None
    line: int = 0
    #: what the value is called in messages: an operation's "argument", or a device's "param"
    kind: str = "argument"

    @property
    def required(self):
        return self.default is REQUIRED

    def check(self, value):
        """Return ``value`` normalised for this argument.

        Raises:
            TypeError: wrong type (names the argument and the value).
            ValueError: outside the limits or not a choice.
        """
        name = self.name
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError(f"{self.kind} {name!r} must be True or False, got {type(value).__name__}: {value!r}")
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise TypeError(f"{self.kind} {name!r} must be an int, got {type(value).__name__}: {value!r}")
            self._check_range(value)
            return value
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{self.kind} {name!r} must be a number, got {type(value).__name__}: {value!r}")
            value = float(value)
            if math.isnan(value) or math.isinf(value):
                raise ValueError(f"{self.kind} {name!r} must be a finite number, got {value!r}")
            self._check_range(value)
            return value
        if self.type == "str":
            if not isinstance(value, str):
                raise TypeError(f"{self.kind} {name!r} must be a str, got {type(value).__name__}: {value!r}")
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"{self.kind} {name!r} must be at most {self.max_length} characters, "
                                 f"got {len(value)}: {value!r}")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ValueError(f"{self.kind} {name!r} must match {self.pattern!r}, got {value!r}")
            return value
        # enum
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"{self.kind} {name!r} must be one of {self.choices}, got {type(value).__name__}: {value!r}")
        if isinstance(value, float):
            # a number given for a key that reads as one: 0.2 is "0.2", 10.0 is "10" or "10.0"
            texts = [repr(value)] + ([str(int(value))] if value.is_integer() else [])
            key = next((t for t in texts if t in self.values), None)
            if key is None:
                raise ValueError(f"{self.kind} {name!r} must be one of {self.choices}, got {value!r}")
            return key
        key = value if isinstance(value, str) else str(value)
        if key not in self.values:
            folded = {k.lower(): k for k in self.values}
            if key.lower() in folded:
                return folded[key.lower()]
            raise ValueError(f"{self.kind} {name!r} must be one of {self.choices}, got {value!r}")
        return key

    def _check_range(self, value):
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.kind} {self.name!r} must be >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.kind} {self.name!r} must be <= {self.max}, got {value!r}")

    def wire(self, value):
        """The value as sent: enum keys become their wire value, bools their text."""
        if self.type == "enum":
            return self.values[value]
        if self.type == "bool":
            return self.true_text if value else self.false_text
        return value

    def text(self, value):
        """The value as text on the wire (text protocol)."""
        wire = self.wire(value)
        if self.format:
            return format(wire, self.format)
        if isinstance(wire, float):
            return repr(wire) if abs(wire) < 1e16 else f"{wire:g}"
        return str(wire)


@dataclasses.dataclass
class ArraySpec:
    """A field that repeats: ``count`` times, or as often as the device says (at most ``max``)."""

    count: int = None
    max: int = None
    labels: list = None

    @property
    def size(self):
        """The most elements there can be."""
        return self.count if self.count is not None else self.max


@dataclasses.dataclass
class StatusSpec:
    """A status item that comes with each value and can mark it invalid."""

    position: str = "before"
    valid: list = None
    invalid_value: object = None
    field: str = None
    map: dict = None


@dataclasses.dataclass
class SimSpec:
    """How the simulator makes a value: a state variable, a sample value, a range, noise."""

    value: object = None
    range: tuple = None
    noise: float = 0.0
    state: str = None


@dataclasses.dataclass
class ExponentSpec:
    """A number sent as mantissa digits followed by power-of-ten exponent digits (Pfeiffer ``u_expo_new``)."""

    mantissa_digits: int
    digits: int = 2
    offset: int = 0


@dataclasses.dataclass
class FieldSpec:
    """One named, typed value parsed from a reply."""

    name: str
    type: str = "str"
    unit: str = None
    description: str = ""
    alarm: tuple = None
    warning: tuple = None
    map: dict = None
    flags: dict = None
    flag_type: str = "bool"
    array: ArraySpec = None
    status: StatusSpec = None
    scale: float = None
    offset: float = None
    true_text: str = None
    false_text: str = None
    #: number base of a text int field (16 for hex replies without 0x)
    base: int = None
    wire: str = None
    byte: int = None
    register: int = None
    order: str = "big"
    sim: SimSpec = None
    #: text float: the reply is mantissa digits then exponent digits, value = mantissa * 10 ** (exponent + offset)
    exponent: "ExponentSpec" = None
    #: for a field derived from another one (a flag, a status): that field's name
    source: str = None
    line: int = 0

    def renamed(self, name, **changes):
        return dataclasses.replace(self, name=name, **changes)


@dataclasses.dataclass
class ChecksumSpec:
    """A checksum of a binary frame: its algorithm, the bytes it covers, where it sits."""

    type: str
    #: the first byte covered (``from`` in the file); the checksum covers up to its own first byte
    start: int = 0
    #: reply only: offset of the checksum, negative counting from the end (-size: the last bytes)
    byte: int = None
    order: str = "big"
    #: text only: how the value is written (a fixed-width Python format spec: "03d", "02X")
    format: str = None
    #: text only: written between the frame and its checksum, and not covered by it (NMEA's "*")
    separator: str = ""

    @property
    def size(self):
        return checksum_size(self.type)

    def position(self, length):
        """Offset of the checksum in a reply of ``length`` bytes."""
        return self.byte if self.byte >= 0 else length + self.byte


@dataclasses.dataclass
class LengthSpec:
    """A reply whose length the device gives in a field of the frame: length = value + ``plus``."""

    byte: int
    wire: str = "u8"
    order: str = "big"
    plus: int = 0
    max: int = None

    @property
    def header(self):
        """Bytes to read before the length is known."""
        return self.byte + WIRE_TYPES[self.wire][0]


@dataclasses.dataclass
class ErrorReplySpec:
    """A binary device's error frame in place of a reply (a Modbus RTU exception): raised as DeviceError."""

    starts_with: bytes
    length: int
    code_byte: int
    code_wire: str = "u8"
    code_order: str = "big"
    messages: dict = dataclasses.field(default_factory=dict)
    #: the code the simulator answers a request with arguments out of range with (None: no answer)
    sim_code: int = None


@dataclasses.dataclass
class ReplySpec:
    """How a reply is parsed: one value, separated items, a regex, or fixed binary positions."""

    mode: str = "single"
    split: str = None
    regex: object = None
    format: str = None
    strip: bool = True
    #: binary: the fixed reply length in bytes, or None when ``length_field`` gives it
    length: int = None
    length_field: LengthSpec = None
    checksum: ChecksumSpec = None
    #: binary: the bytes every reply starts with (a sync word, an echoed address and function)
    starts_with: bytes = None
    #: positions in ``starts_with`` that may hold any byte (``??``: a length byte before an echoed command)
    starts_any: frozenset = frozenset()
    #: binary: the device's error frame, when it answers with one instead
    error: ErrorReplySpec = None

    def starts_text(self):
        """``starts_with`` as written: hex bytes, ``??`` where any byte is taken."""
        return " ".join("??" if i in self.starts_any else f"{b:02x}" for i, b in enumerate(self.starts_with))
    fields: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Step:
    """One step of a transaction."""

    action: str
    value: object = None
    terminator: object = None
    timeout: float = None
    line: int = 0


@dataclasses.dataclass
class TransactionSpec:
    name: str
    steps: list
    attempts: int = 1
    line: int = 0


@dataclasses.dataclass
class RequestItem:
    """One part of a binary request: a literal byte string, an encoded argument or a checksum."""

    literal: bytes = None
    arg: str = None
    wire: str = "u8"
    order: str = "big"
    checksum: ChecksumSpec = None
    #: an argument is sent as round((value - offset) / scale)
    scale: float = None
    offset: float = None

    @property
    def size(self):
        if self.literal is not None:
            return len(self.literal)
        if self.checksum is not None:
            return self.checksum.size
        return WIRE_TYPES[self.wire][0]


@dataclasses.dataclass
class ModbusSpec:
    function: int
    address: int
    count: int = None
    value: object = None


@dataclasses.dataclass
class GuardCheck:
    """One interlock check: when the arguments match ``when``, run ``query`` and
    require its ``field`` to satisfy the bounds, else refuse with ``message``."""

    when: dict
    query: str
    args: dict
    field: str
    min: float = None
    max: float = None
    below: float = None
    above: float = None
    equals: object = None
    message: str = ""
    line: int = 0

    def allows(self, value):
        if self.equals is not None and value != self.equals:
            return False
        if self.min is not None and not value >= self.min:
            return False
        if self.max is not None and not value <= self.max:
            return False
        if self.below is not None and not value < self.below:
            return False
        if self.above is not None and not value > self.above:
            return False
        return True


@dataclasses.dataclass
class GuardSpec:
    """Interlocks checked before an operation sends anything."""

    checks: list
    skip_if: str = None


@dataclasses.dataclass
class OperationSpec:
    """A command or query of a device."""

    name: str
    kind: str
    description: str = ""
    args: list = dataclasses.field(default_factory=list)
    fields: list = dataclasses.field(default_factory=list)
    writes: bool = False
    request: object = None
    reply: ReplySpec = None
    transaction: TransactionSpec = None
    timeout: float = None
    attempts: int = 1
    check_errors: bool = None
    sim_sets: dict = None
    modbus: ModbusSpec = None
    guard: GuardSpec = None
    line: int = 0

    @property
    def arg_map(self):
        """``{name: ArgSpec}`` (built once; ``args`` is not changed after loading)."""
        cached = self.__dict__.get("_arg_map")
        if cached is None or cached[0] is not self.args or len(cached[1]) != len(self.args):
            cached = (self.args, {a.name: a for a in self.args})
            self.__dict__["_arg_map"] = cached
        return cached[1]

    def check_args(self, **kwargs):
        """Check and normalise arguments; fill defaults.

        Raises:
            TypeError: an unknown or missing argument, or a value of the wrong type.
            ValueError: a value outside the limits.
        """
        known = self.arg_map
        for key in kwargs:
            if key not in known:
                raise TypeError(f"{self.name}: unknown argument {key!r} (arguments: "
                                f"{', '.join(known) or 'none'})")
        out = {}
        for arg in self.args:
            if arg.name in kwargs and kwargs[arg.name] is not None:
                out[arg.name] = arg.check(kwargs[arg.name])
            elif arg.required:
                raise TypeError(f"{self.name}: missing required argument {arg.name!r}")
            else:
                out[arg.name] = None if arg.default is None else arg.check(arg.default)
        return out

    @property
    def value_fields(self):
        """The fields as parsed (arrays and flag parents, before expansion)."""
        return [] if self.reply is None else self.reply.fields


@dataclasses.dataclass
class ConnectionSpec:
    port: int
    protocol: str = "text"
    encoding: str = "ascii"
    out_terminator: str = "\n"
    in_terminator: list = dataclasses.field(default_factory=lambda: ["\n"])
    timeout: float = 5.0
    connect_timeout: float = None
    min_gap: float = 0.0
    stale_input: str = "drain"
    strip: bool = True
    #: a ready prompt the device prints; removed from the start of each reply frame
    prompt: str = None
    init: list = dataclasses.field(default_factory=list)
    query_transaction: TransactionSpec = None
    command_transaction: TransactionSpec = None
    unit: int = 1
    transaction_id: object = "increment"
    #: text only: the checksum written at the end of every frame sent and checked at the end of every frame read
    checksum: ChecksumSpec = None


@dataclasses.dataclass
class ReplyErrorSpec:
    """An error token in place of a reply, and how to recover from it."""

    terminator: str = None
    match: object = None
    query: str = None
    parse: object = None
    format: str = None
    recover: dict = None
    attempts: int = 1
    sim_code: object = None
    sim_message: str = ""


@dataclasses.dataclass
class ErrorQueueSpec:
    """A queue of error entries read after commands (SCPI ``SYST:ERR?``)."""

    query: str
    parse: object
    format: str = None
    ok: list = dataclasses.field(default_factory=lambda: ["0"])
    after: str = "commands"


@dataclasses.dataclass
class PollItem:
    operation: str
    args: dict
    #: reply field -> feed field name (a template with ``{n}``/``{label}`` for arrays)
    fields: dict
    #: feed field name -> (alarm, warning) overrides
    limits: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PollSpec:
    feed: str
    block: str
    rate: float = 1.0
    frame_length: float = 60
    items: list = dataclasses.field(default_factory=list)
    feed_fields: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TaskSpec:
    """An extra OCS operation name: an alias of an operation, ``init`` or ``stop``."""

    name: str
    kind: str = "alias"
    operation: str = None
    #: alias argument name -> operation argument name
    args: dict = dataclasses.field(default_factory=dict)
    #: arguments of the task itself (for an alias: the renamed operation arguments)
    params: list = dataclasses.field(default_factory=list)
    description: str = ""


@dataclasses.dataclass
class AgentSpec:
    agent_class: str = "DeviceAgent"
    tasks: dict = dataclasses.field(default_factory=dict)
    acq_args: dict = dataclasses.field(default_factory=lambda: {"rate": "sampling_frequency"})
    hide: list = dataclasses.field(default_factory=list)
    modes: dict = dataclasses.field(default_factory=dict)
    default_mode: str = None


@dataclasses.dataclass
class DeviceSpec:
    name: str
    title: str
    description: str
    path: pathlib.Path
    source_lines: int
    connection: ConnectionSpec
    operations: dict
    replaces: dict = None
    polling: PollSpec = None
    agent: AgentSpec = dataclasses.field(default_factory=AgentSpec)
    enums: dict = dataclasses.field(default_factory=dict)
    transactions: dict = dataclasses.field(default_factory=dict)
    reply_error: ReplyErrorSpec = None
    error_queue: ErrorQueueSpec = None
    sim_state: dict = dataclasses.field(default_factory=dict)
    sim_unknown: str = None
    #: values set per device instance (a bus address): ArgSpecs, each with a default
    params: list = dataclasses.field(default_factory=list)

    def param_values(self, given=None, *, texts=False):
        """``{name: value}`` of every param: ``given`` (checked) or the default.
        With ``texts`` the given values are command-line text, converted by type.

        Raises:
            TypeError: an unknown param or a value of the wrong type.
            ValueError: a value outside the limits (names the param and the value).
        """
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        for name in given:
            if name not in known:
                raise TypeError(f"{self.name}: unknown param {name!r} (params: {', '.join(known) or 'none'})")
        out = {}
        for p in self.params:
            if p.name in given:
                value = _param_from_text(p, given[p.name]) if texts else given[p.name]
                out[p.name] = p.check(value)
            else:
                out[p.name] = p.check(p.default)
        return out

    @property
    def queries(self):
        return {k: v for k, v in self.operations.items() if v.kind == "query"}

    @property
    def commands(self):
        return {k: v for k, v in self.operations.items() if v.kind == "command"}


# ----------------------------------------------------------------------
# finding files

def list_devices():
    """Short names of the shipped device files, sorted."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def find(name_or_path):
    """The path of a device file given by short name or path.

    Raises:
        FileNotFoundError: no such file (the message lists the shipped names).
    """
    if isinstance(name_or_path, pathlib.Path) or (isinstance(name_or_path, str) and (
            "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")))):
        path = pathlib.Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"device file {str(name_or_path)!r} does not exist")
        return path
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"a device file is named by a short name or a path, got {name_or_path!r}")
    path = _DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        local = pathlib.Path(name_or_path)
        if local.is_file():
            return local
        raise FileNotFoundError(f"no shipped device file {name_or_path!r}; shipped: {', '.join(list_devices())}")
    return path


def load(name_or_path):
    """Load and check a device file; return its :class:`DeviceSpec`.

    Raises:
        DeviceFileError: the file has problems (all of them are listed).
        FileNotFoundError: no such file.
    """
    path = find(name_or_path)
    shown = path.name if path.parent == _DIR else str(name_or_path)
    text = path.read_text(encoding="utf-8")
    return loads(text, shown, path)


def loads(text, file="<string>", path=None):
    """Load a device file from its text (``file`` names it in errors)."""
    loader = _Loader(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise DeviceFileError([DeviceFileProblem(file, line, "", _yaml_message(e))]) from None
    except yaml.YAMLError as e:
        raise DeviceFileError([DeviceFileProblem(file, 1, "", f"not valid YAML: {e}")]) from None
    if node is None:
        raise DeviceFileError([DeviceFileProblem(file, 1, "", "the file is empty")])
    spec = loader.device(node, pathlib.Path(path) if path else pathlib.Path(file), text)
    if loader.problems:
        raise DeviceFileError(sorted(loader.problems, key=lambda p: p.line))
    return spec


#: what a YAML parser's complaint usually means in a device file
_YAML_HINTS = (
    ("mapping values are not allowed", "a ':' inside an unquoted value (quote the value), or a key indented "
                                       "deeper than the one above it"),
    ("expected <block end>", "this line's indentation does not match the lines above it"),
    ("could not find expected ':'", "a line without 'key: value', or a quote that is not closed"),
    ("found character '\\t'", "YAML indents with spaces, not tabs"),
    ("expected ',' or '}'", "a '{' without its '}', or a value in it that holds ',' ':' '{' or '#' unquoted"),
    ("expected ',' or ']'", "a '[' without its ']', or a value in it that holds ',' ':' '[' or '#' unquoted"),
    ("found undefined alias", "'*' starts an alias in YAML: quote a value that starts with '*'"),
    ("found unknown escape character", "in double quotes only YAML escapes are allowed ('\\r', '\\n', "
                                       "'\\x05'); use single quotes for a regex"),
)


def _yaml_message(e):
    """The parser's complaint, where it is (column, and the block it was reading), and what it usually means."""
    problem = e.problem or str(e)
    where = []
    if e.problem_mark is not None:
        where.append(f"column {e.problem_mark.column + 1}")
    if e.context and e.context_mark is not None and e.problem_mark is not None \
            and e.context_mark.line != e.problem_mark.line:
        where.append(f"{e.context} at line {e.context_mark.line + 1}")
    hint = next((h for key, h in _YAML_HINTS if key in problem), None)
    if hint:
        where.append(hint)
    return f"not valid YAML: {problem}" + (f" ({'; '.join(where)})" if where else "")


def _source_lines(text):
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


# ----------------------------------------------------------------------
# the loader

class _Skip(Exception):
    """A problem was recorded; give up on this part of the file."""


_constructor = SafeConstructor()


class _Loader:
    def __init__(self, file):
        self.file = file
        self.problems = []
        #: operations with a problem of their own: checks that refer to them are skipped, not reported again
        self.damaged = set()
        #: (node, key, state name) of every ``sim.sets`` entry, checked once all fields are known
        self.set_targets = []
        self.params = []
        self.param_names = set()

    # -- reporting ---------------------------------------------------
    def problem(self, node, key, message):
        """Record a problem at ``node``'s line (or at a line number given as an int)."""
        if isinstance(node, int):
            line = node
        else:
            line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(DeviceFileProblem(self.file, line, key, message))

    def fail(self, node, key, message):
        self.problem(node, key, message)
        raise _Skip

    # -- node helpers ------------------------------------------------
    def mapping(self, node, key, allowed, required=()):
        """Keys of a mapping node: {name: (key_node, value_node)}; unknown keys are problems."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"must be a mapping, got {self.describe(node)}")
        out = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.problem(knode, key, "keys must be plain names")
                continue
            name = knode.value
            if name in out:
                self.problem(knode, _join(key, name), "duplicate key")
                continue
            if allowed is not None and name not in allowed:
                self.problem(knode, _join(key, name), f"unknown key (allowed: {', '.join(allowed)})")
                continue
            out[name] = (knode, vnode)
        for name in required:
            if name not in out:
                self.problem(node, key, f"missing required key {name!r}")
        return out

    def items(self, node, key):
        """A mapping whose keys are names chosen by the file (operations, fields, ...)."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"must be a mapping, got {self.describe(node)}")
        out = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if name is None:
                self.problem(knode, key, "keys must be plain names")
                continue
            if name in out:
                self.problem(knode, _join(key, name), "duplicate name")
                continue
            out[name] = (knode, vnode)
        return out

    def seq(self, node, key):
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, f"must be a list, got {self.describe(node)}")
        return node.value

    @staticmethod
    def describe(node):
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        return repr(node.value)

    def value(self, node, key):
        """The Python value of a scalar node."""
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, key, f"must be a single value, got {self.describe(node)}")
        try:
            return _constructor.construct_object(node, deep=True)
        except ConstructorError as e:
            self.fail(node, key, f"bad value: {e.problem}")

    def plain(self, node, key):
        """Any value: scalars, lists and mappings as Python objects."""
        if isinstance(node, yaml.ScalarNode):
            return self.value(node, key)
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(n, f"{key}[{i}]") for i, n in enumerate(node.value)]
        return {self.value(k, key): self.plain(v, _join(key, str(k.value))) for k, v in node.value}

    def string(self, node, key, allow_empty=True):
        v = self.value(node, key)
        if not isinstance(v, str):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return node.value
            if v is None and not node.value:
                self.fail(node, key, "must be text, got nothing")
            if isinstance(v, bool) or v is None:
                self.fail(node, key, f"must be text, got {node.value!r}, which YAML reads as {v!r} "
                                     f"when unquoted: write \"{node.value}\"")
            self.fail(node, key, f"must be text, got {self.describe(node)}")
        if not allow_empty and not v:
            self.fail(node, key, "must not be empty")
        return v

    def name(self, node, key):
        v = self.string(node, key)
        if not _NAME.match(v):
            self.fail(node, key, f"{v!r} is not a valid name (a letter, then letters, digits or _)")
        return v

    def number(self, node, key, integer=False, minimum=None, allow_none=False):
        v = self.value(node, key)
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            what = "an integer" if integer else "a number"
            self.fail(node, key, f"must be {what}, got {self.describe(node)}")
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            self.fail(node, key, f"must be a finite number, got {node.value!r}")
        if minimum is not None and v < minimum:
            self.fail(node, key, f"must be >= {minimum}, got {v!r}")
        return v

    def boolean(self, node, key):
        v = self.value(node, key)
        if not isinstance(v, bool):
            self.fail(node, key, f"must be true or false, got {self.describe(node)}")
        return v

    def choice(self, node, key, options, what="value"):
        v = self.string(node, key)
        if v not in options:
            self.fail(node, key, f"unknown {what} {v!r} (one of: {', '.join(options)})")
        return v

    def regex(self, node, key):
        text = self.string(node, key)
        try:
            return re.compile(text)
        except re.error as e:
            self.fail(node, key, f"not a valid regular expression: {e}")

    def pair(self, node, key):
        """[low, high] with null for an open side."""
        items = self.seq(node, key)
        if len(items) != 2:
            self.fail(node, key, f"must be [low, high], got {len(items)} items")
        low = self.number(items[0], key, allow_none=True)
        high = self.number(items[1], key, allow_none=True)
        if low is not None and high is not None and low > high:
            self.fail(node, key, f"low {low} is above high {high}")
        return (low, high)

    def attempt(self, func, *args, default=None):
        try:
            return func(*args)
        except _Skip:
            return default

    # -- the document ------------------------------------------------
    TOP = ("device", "title", "description", "replaces", "connection", "params", "enums", "transactions", "errors",
           "queries", "commands", "polling", "agent", "sim")

    def device(self, node, path, text):
        try:
            top = self.mapping(node, "", self.TOP, required=("device", "connection"))
        except _Skip:
            return None
        get = top.get
        name = self.attempt(self.name, get("device", (None, None))[1], "device") if "device" in top else None
        title = self.attempt(self.string, top["title"][1], "title", default="") if "title" in top else (name or "")
        description = self.attempt(self.string, top["description"][1], "description", default="") \
            if "description" in top else ""
        replaces = self.attempt(self.replaces, top["replaces"][1]) if "replaces" in top else None
        self.enums = self.attempt(self.enum_table, top["enums"][1], default={}) if "enums" in top else {}
        self.params = self.attempt(self.params_section, top["params"][1], default=[]) if "params" in top else []
        self.param_names |= {p.name for p in self.params}
        self.guards = []
        self.transactions = {}
        if "transactions" in top:
            self.attempt(self.transaction_table, top["transactions"][1])
        connection = self.attempt(self.connection, top["connection"][1]) if "connection" in top else None
        protocol = connection.protocol if connection else "text"
        self.protocol = protocol
        self.connection_spec = connection
        reply_error = queue = None
        if "params" in top and protocol != "text":
            self.problem(top["params"][0], "params", f"only for protocol: text (its templates use them; this is "
                                                     f"{protocol})")
        if "errors" in top and protocol != "text":
            why = ("the driver raises Modbus exception replies as DeviceError" if protocol == "modbus" else
                   "describe a binary error reply by its fields, or refuse it with the reply's 'starts_with'")
            self.problem(top["errors"][0], "errors", f"only for protocol: text ({why})")
        elif "errors" in top:
            reply_error, queue = self.attempt(self.errors, top["errors"][1], default=(None, None))
        operations = {}
        for section, kind in (("queries", "query"), ("commands", "command")):
            if section not in top:
                continue
            try:
                entries = self.items(top[section][1], section)
            except _Skip:
                continue
            for op_name, (knode, vnode) in entries.items():
                key = f"{section}.{op_name}"
                if not _NAME.match(op_name):
                    self.problem(knode, key, f"{op_name!r} is not a valid name (a letter, then letters, digits or _)")
                    continue
                if op_name in operations:
                    self.problem(knode, key, f"{op_name!r} is already defined as a {operations[op_name].kind}")
                    continue
                if op_name in RESERVED_NAMES:
                    self.problem(knode, key, f"{op_name!r} is a method or attribute of the driver "
                                             "(socs_tcp.devices.Device); choose another name")
                    continue
                before = len(self.problems)
                op = self.attempt(self.operation, vnode, key, op_name, kind, connection)
                if len(self.problems) > before:
                    self.damaged.add(op_name)
                if op is not None:
                    operations[op_name] = op
        for op, gnode, gkey in self.guards:
            op.guard = self.attempt(self.guard, op, gnode, gkey, operations)
        if not self.damaged:
            self.check_set_targets(operations)
        if not operations and "queries" not in top and "commands" not in top:
            self.problem(node, "", "a device needs at least one of 'queries' or 'commands'")
        sim_state, sim_unknown = {}, None
        if "sim" in top:
            sim_state, sim_unknown = self.attempt(self.sim_section, top["sim"][1], default=({}, None))
        polling = self.attempt(self.polling, top["polling"][1], operations) if "polling" in top else None
        agent = self.attempt(self.agent, top["agent"][1], operations, polling) if "agent" in top else None
        if connection is None or name is None:
            return None
        return DeviceSpec(
            name=name, title=title, description=description, path=path, source_lines=_source_lines(text),
            connection=connection, operations=operations, replaces=replaces, polling=polling,
            agent=agent or AgentSpec(), enums=self.enums, transactions=self.transactions,
            reply_error=reply_error, error_queue=queue, sim_state=sim_state, sim_unknown=sim_unknown,
            params=self.params)

    def replaces(self, node):
        m = self.mapping(node, "replaces", ("agent", "socs_lines", "docs_lines", "socs_path"))
        out = {}
        for k, (_, v) in m.items():
            out[k] = self.attempt(self.plain, v, f"replaces.{k}")
        return out

    def enum_table(self, node):
        out = {}
        for name, (knode, vnode) in self.items(node, "enums").items():
            key = f"enums.{name}"
            if not _NAME.match(name):
                self.problem(knode, key, f"{name!r} is not a valid name")
                continue
            before = len(self.problems)
            table = self.attempt(self.enum_values, vnode, key)
            if table is not None:
                out[name] = table
            elif len(self.problems) > before:
                out[name] = {}                # reported already: its users are not told it is unknown
        return out

    def enum_values(self, node, key):
        """An enum: a mapping key -> wire value, or a list of keys sent as themselves."""
        if isinstance(node, yaml.SequenceNode):
            out = {}
            for item in node.value:
                text = self.string(item, key)
                m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", text)
                if m:
                    lo, hi = int(m.group(1)), int(m.group(2))
                    if lo > hi:
                        self.fail(item, key, f"range {text!r} is empty")
                    for i in range(lo, hi + 1):
                        out[str(i)] = str(i)
                else:
                    if text in out:
                        self.fail(item, key, f"duplicate choice {text!r}")
                    out[text] = text
            if not out:
                self.fail(node, key, "must list at least one choice")
            return out
        entries = self.items(node, key)
        out = {}
        seen = {}
        for k, (_knode, vnode) in entries.items():
            v = self.value(vnode, f"{key}.{k}")
            if isinstance(v, (dict, list)) or v is None:
                self.fail(vnode, f"{key}.{k}", "must be the text or number sent for this choice")
            wire = str(v) if not isinstance(v, bool) else ("1" if v else "0")
            if wire in seen:
                self.problem(vnode, f"{key}.{k}", f"wire value {wire!r} is already used by {seen[wire]!r}")
            seen[wire] = k
            out[k] = v
        if not out:
            self.fail(node, key, "must have at least one choice")
        return out

    # -- transactions --------------------------------------------------
    def transaction_table(self, node):
        for name, (_knode, vnode) in self.items(node, "transactions").items():
            key = f"transactions.{name}"
            t = self.attempt(self.transaction, vnode, key, name)
            if t is not None:
                self.transactions[name] = t

    def transaction(self, node, key, name):
        m = self.mapping(node, key, ("steps", "attempts", "description"), required=("steps",))
        if "steps" not in m:
            raise _Skip
        steps = self.steps(m["steps"][1], f"{key}.steps", in_transaction=True)
        attempts = self.number(m["attempts"][1], f"{key}.attempts", integer=True, minimum=1) if "attempts" in m else 1
        replies = [s for s in steps if s.action == "reply"]
        if len(replies) > 1:
            self.problem(node, f"{key}.steps", "at most one 'reply' step")
        if not any(s.action == "send" for s in steps):
            self.problem(node, f"{key}.steps", "needs a 'send' step")
        return TransactionSpec(name, steps, attempts, node.start_mark.line + 1)

    STEP_ACTIONS = ("send", "expect", "reply", "read", "discard", "pause")

    def steps(self, node, key, in_transaction):
        out = []
        for i, item in enumerate(self.seq(node, key)):
            k = f"{key}[{i}]"
            step = self.attempt(self.step, item, k, in_transaction)
            if step is not None:
                out.append(step)
        return out

    def step(self, node, key, in_transaction):
        m = self.mapping(node, key, self.STEP_ACTIONS + ("terminator", "timeout"))
        actions = [a for a in self.STEP_ACTIONS if a in m]
        if len(actions) != 1:
            self.fail(node, key, f"a step has exactly one of {', '.join(self.STEP_ACTIONS)}"
                      + (f", got {', '.join(actions)}" if actions else ""))
        action = actions[0]
        vnode = m[action][1]
        if action in ("send", "expect"):
            value = self.string(vnode, f"{key}.{action}")
            if "{" in value:
                names = self.placeholders(vnode, f"{key}.{action}", value)
                allowed = ({"request"} if in_transaction and action == "send" else set()) | self.param_names
                bad = [n for n in names if n not in allowed]
                if not bad:
                    self.check_specs(vnode, f"{key}.{action}", value, {})
                if bad:
                    shown = sorted(allowed)
                    self.fail(vnode, f"{key}.{action}", f"unknown placeholder {{{bad[0]}}}"
                              + (f" (allowed: {', '.join('{' + n + '}' for n in shown)})" if shown else
                                 " (no params defined)"))
        elif action in ("discard", "pause"):
            value = self.number(vnode, f"{key}.{action}", minimum=0)
        else:
            if isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "~", "null", "true"):
                value = None
            else:
                self.fail(vnode, f"{key}.{action}", "takes no value (use 'terminator' and 'timeout' beside it)")
            if action == "reply" and not in_transaction:
                self.fail(m[action][0], f"{key}.reply", "'reply' only in a transaction; use 'read' here")
        terminator = None
        if "terminator" in m:
            terminator = self.terminators(m["terminator"][1], f"{key}.terminator")
        timeout = self.number(m["timeout"][1], f"{key}.timeout", minimum=0) if "timeout" in m else None
        return Step(action, value, terminator, timeout, node.start_mark.line + 1)

    def terminators(self, node, key):
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        terms = [self.string(n, key) for n in nodes]
        for n, t in zip(nodes, terms):
            self.check_escapes(n, key, t)
        if isinstance(node, yaml.SequenceNode):
            if not terms or any(t == "" for t in terms):
                self.fail(node, key, "a list of terminators must not be empty or contain ''")
            return terms
        return [terms[0]] if terms[0] else []

    def check_specs(self, node, key, template, arg_map):
        """Each ``{name:spec}`` of a text template formats a value of its argument or param (checked now,
        not at the first call)."""
        params = {p.name: p for p in self.params}
        for _, name, spec, _ in string.Formatter().parse(template):
            if not name or not spec:
                continue
            a = arg_map.get(name) or params.get(name)
            if a is None:
                continue
            samples = {"int": [0, 1], "float": [0.0, 1.5], "str": ["x"], "bool": [a.true_text, a.false_text],
                       "enum": list((a.values or {}).values())}.get(a.type, [])
            if a.type in ("int", "float") and a.min is not None:
                samples.append(a.min)
            for v in samples:
                try:
                    format(v, spec)
                except (ValueError, TypeError) as e:
                    self.problem(node, key, f"placeholder {{{name}:{spec}}}: {e} ({a.kind} {name!r} is {a.type})")
                    break

    def check_escapes(self, node, key, text):
        """A terminator typed as backslash sequences in single quotes is four characters, not CR LF."""
        m = _ESCAPE_TYPED.search(text)
        if m:
            self.problem(node, key, f"{text!r} holds a backslash and {m.group(1)!r}: in single quotes or unquoted, "
                                    f"YAML keeps the backslash; write control characters in double quotes "
                                    f"(\"\\r\\n\")")

    def placeholders(self, node, key, template):
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            self.fail(node, key, f"bad template {template!r}: {e} (write {{{{ and }}}} for literal braces)")
        names = []
        for _, fname, spec, conv in parsed:
            if fname is None:
                continue
            if not _NAME.match(fname or ""):
                self.fail(node, key, f"placeholder {{{fname}}} in {template!r} is not an argument name")
            if conv:
                self.fail(node, key, f"placeholder {{{fname}!{conv}}}: conversions are not allowed")
            if spec and "{" in spec:
                self.fail(node, key, f"placeholder {{{fname}:{spec}}}: nested fields are not allowed")
            names.append(fname)
        return names

    # -- connection ----------------------------------------------------
    CONNECTION = ("port", "protocol", "encoding", "out_terminator", "in_terminator", "timeout", "connect_timeout",
                  "min_gap", "stale_input", "strip", "prompt", "init", "query_transaction", "command_transaction", "unit",
                  "transaction_id", "checksum")

    def connection(self, node):
        m = self.mapping(node, "connection", self.CONNECTION, required=("port",))
        c = ConnectionSpec(port=0)
        for k, (_knode, v) in m.items():
            key = f"connection.{k}"
            try:
                if k == "port":
                    c.port = self.number(v, key, integer=True, minimum=1)
                    if c.port > 65535:
                        self.fail(v, key, f"must be in 1..65535, got {c.port}")
                elif k == "protocol":
                    c.protocol = self.choice(v, key, PROTOCOLS, "protocol")
                elif k == "encoding":
                    c.encoding = self.string(v, key)
                    try:
                        "".encode(c.encoding)
                    except LookupError:
                        self.fail(v, key, f"unknown encoding {c.encoding!r}")
                elif k == "out_terminator":
                    c.out_terminator = self.string(v, key)
                    self.check_escapes(v, key, c.out_terminator)
                elif k == "in_terminator":
                    c.in_terminator = self.terminators(v, key)
                elif k in ("timeout", "connect_timeout", "min_gap"):
                    setattr(c, k, self.number(v, key, minimum=0))
                elif k == "stale_input":
                    c.stale_input = self.choice(v, key, STALE_INPUT, "stale_input mode")
                elif k == "strip":
                    c.strip = self.boolean(v, key)
                elif k == "prompt":
                    c.prompt = self.string(v, key, allow_empty=False)
                elif k == "init":
                    c.init = self.steps(v, key, in_transaction=False)
                elif k in ("query_transaction", "command_transaction"):
                    setattr(c, k, self.transaction_ref(v, key))
                elif k == "checksum":
                    c.checksum = self.text_checksum(v, key)
                elif k == "unit":
                    c.unit = self.number(v, key, integer=True, minimum=0)
                    if c.unit > 255:
                        self.fail(v, key, f"must be in 0..255, got {c.unit}")
                elif k == "transaction_id":
                    tid = self.value(v, key)
                    if tid != "increment" and (isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid <= 0xFFFF):
                        self.fail(v, key, f"must be 'increment' or a fixed id in 0..65535, got {v.value!r}")
                    c.transaction_id = tid
            except _Skip:
                pass
        if c.protocol != "modbus":
            for k in ("unit", "transaction_id"):
                if k in m:
                    self.problem(m[k][0], f"connection.{k}", "only for protocol: modbus")
        if c.protocol != "text":
            for k in ("out_terminator", "in_terminator", "query_transaction", "command_transaction", "prompt"):
                if k in m:
                    self.problem(m[k][0], f"connection.{k}", f"only for protocol: text (this is {c.protocol})")
            if "checksum" in m:
                self.problem(m["checksum"][0], "connection.checksum",
                             "only for protocol: text (a binary frame's checksum is an item of its request and a "
                             "key of its reply)" if c.protocol == "binary" else
                             "only for protocol: text (Modbus TCP frames have no checksum)")
                c.checksum = None
        elif not c.in_terminator:
            self.problem(m["in_terminator"][1], "connection.in_terminator", "a text device needs an in_terminator")
        return c

    def transaction_ref(self, node, key):
        name = self.string(node, key)
        if name not in self.transactions:
            self.fail(node, key, f"unknown transaction {name!r}"
                      + (f" (defined: {', '.join(self.transactions)})" if self.transactions else
                         " (none defined under 'transactions')"))
        return self.transactions[name]

    # -- errors ------------------------------------------------------
    def errors(self, node):
        m = self.mapping(node, "errors", ("reply", "queue"))
        reply = queue = None
        if "reply" in m:
            reply = self.attempt(self.reply_error, m["reply"][1])
            for k in ("match", "parse"):
                rx = getattr(reply, k, None)
                if rx is not None and any("{" + n in rx.pattern for n in self.param_names):
                    self.problem(m["reply"][1], f"errors.reply.{k}", "params are not filled into a regex; match "
                                                                     "their value with a pattern (\\d{3})")
        if "queue" in m:
            queue = self.attempt(self.error_queue, m["queue"][1])
        return reply, queue

    def reply_error(self, node):
        key = "errors.reply"
        m = self.mapping(node, key, ("terminator", "match", "query", "parse", "format", "recover", "attempts",
                                     "sim_code", "sim_message"))
        r = ReplyErrorSpec()
        if "terminator" in m:
            r.terminator = self.string(m["terminator"][1], f"{key}.terminator", allow_empty=False)
        if "match" in m:
            r.match = self.regex(m["match"][1], f"{key}.match")
        if r.terminator is None and r.match is None:
            self.fail(node, key, "needs 'terminator' (the reply ended with it) or 'match' (a regex on the reply)")
        if "query" in m:
            r.query = self.string(m["query"][1], f"{key}.query", allow_empty=False)
            if "parse" not in m:
                self.problem(node, key, "'query' needs 'parse' (a regex with groups code and message)")
        if "parse" in m:
            r.parse = self.regex(m["parse"][1], f"{key}.parse")
            self.check_error_regex(m["parse"][1], f"{key}.parse", r.parse)
            r.format = self.sim_format(m, key, r.parse)
        if "recover" in m:
            r.recover = {}
            for code, (_knode, vnode) in self.items(m["recover"][1], f"{key}.recover").items():
                r.recover[str(code)] = self.string(vnode, f"{key}.recover.{code}", allow_empty=False)
        if "attempts" in m:
            r.attempts = self.number(m["attempts"][1], f"{key}.attempts", integer=True, minimum=1)
        if "sim_code" in m:
            r.sim_code = str(self.value(m["sim_code"][1], f"{key}.sim_code"))
        if "sim_message" in m:
            r.sim_message = self.string(m["sim_message"][1], f"{key}.sim_message")
        return r

    def error_queue(self, node):
        key = "errors.queue"
        m = self.mapping(node, key, ("query", "parse", "format", "ok", "after"), required=("query", "parse"))
        if "query" not in m or "parse" not in m:
            raise _Skip
        q = ErrorQueueSpec(self.string(m["query"][1], f"{key}.query", allow_empty=False),
                           self.regex(m["parse"][1], f"{key}.parse"))
        self.check_error_regex(m["parse"][1], f"{key}.parse", q.parse)
        q.format = self.sim_format(m, key, q.parse)
        if "ok" in m:
            v = m["ok"][1]
            q.ok = [str(self.value(n, f"{key}.ok")) for n in v.value] if isinstance(v, yaml.SequenceNode) \
                else [str(self.value(v, f"{key}.ok"))]
        if "after" in m:
            q.after = self.choice(m["after"][1], f"{key}.after", ("commands", "all"), "'after' value")
        if q.format is not None:
            # what the simulator answers must read back as "no error" (else every command fails on it)
            try:
                sample = q.format.format(code=q.ok[0], message="No error")
            except (KeyError, IndexError, ValueError):
                sample = None
            found = q.parse.search(sample) if sample is not None else True
            if found is not True and (found is None or found.group("code") not in q.ok):
                self.problem(m["parse"][1], f"{key}.parse",
                             f"does not read its own 'no error' reply {sample!r} as code {q.ok[0]}"
                             + (f" (it reads code {found.group('code')!r})" if found is not None else ""))
        return q

    def check_error_regex(self, node, key, regex):
        if "code" not in regex.groupindex:
            self.problem(node, key, "needs a named group 'code' (and optionally 'message')")

    def sim_format(self, m, key, regex):
        if "format" in m:
            fmt = self.string(m["format"][1], f"{key}.format")
            names = self.placeholders(m["format"][1], f"{key}.format", fmt)
            for n in names:
                if n not in regex.groupindex and n not in self.param_names:
                    self.problem(m["format"][1], f"{key}.format", f"placeholder {{{n}}} is not a group of the regex"
                                 + (" or a param" if self.param_names else ""))
            return fmt
        fmt = _format_from_regex(regex.pattern)
        if fmt is None:
            node = m.get("parse", m.get("regex", (None, None)))[1]
            self.problem(node, key, "this regex is too complex to derive the simulator's reply from; "
                                    "add 'format' (e.g. '{code},\"{message}\"')")
        return fmt

    # -- operations ----------------------------------------------------
    OP = ("description", "request", "args", "reply", "transaction", "timeout", "attempts", "writes",
          "check_errors", "sim", "modbus", "guard")

    def operation(self, node, key, name, kind, connection):
        m = self.mapping(node, key, self.OP)
        protocol = connection.protocol if connection else "text"
        op = OperationSpec(name=name, kind=kind, writes=(kind == "command"), line=node.start_mark.line + 1)
        if "description" in m:
            op.description = self.attempt(self.string, m["description"][1], f"{key}.description", default="")
        if "args" in m:
            op.args = self.attempt(self.args, m["args"][1], f"{key}.args", protocol, default=[])
        names = {a.name for a in op.args}
        if "args" in m and isinstance(m["args"][1], yaml.MappingNode):
            # an argument with a problem of its own is still an argument: no second error for its use
            names |= {k.value for k, _ in m["args"][1].value if isinstance(k, yaml.ScalarNode)}
        if protocol == "modbus":
            if "request" in m:
                self.problem(m["request"][0], f"{key}.request", "a modbus operation uses 'modbus', not 'request'")
            if "modbus" not in m:
                self.problem(node, key, "missing required key 'modbus' (function, address, count or value)")
            else:
                op.modbus = self.attempt(self.modbus_request, m["modbus"][1], f"{key}.modbus", kind, names)
        else:
            if "modbus" in m:
                self.problem(m["modbus"][0], f"{key}.modbus", f"only for protocol: modbus (this is {protocol})")
            if "request" not in m:
                self.problem(node, key, "missing required key 'request'")
            elif protocol == "text":
                op.request = self.attempt(self.text_request, m["request"][1], f"{key}.request", names)
                if op.request is not None:
                    self.check_specs(m["request"][1], f"{key}.request", op.request, op.arg_map)
            else:
                op.request = self.attempt(self.binary_request, m["request"][1], f"{key}.request", op.arg_map)
        if "reply" in m:
            op.reply = self.attempt(self.reply, m["reply"][1], f"{key}.reply", name, protocol, op)
        elif kind == "query":
            if protocol != "modbus" or (op.modbus and op.modbus.function in (3, 4)):
                self.problem(node, key, "a query needs a 'reply'")
        if op.reply is not None:
            op.fields = self.expand_fields(op.reply.fields)
        if op.modbus and op.modbus.function == 6 and op.reply is not None and op.reply.fields:
            self.problem(m["reply"][0], f"{key}.reply", "a modbus write (function 6) has no reply fields: the "
                                                         "reply is the echo of the request")
        if protocol == "text":
            default_t = None if connection is None else (
                connection.query_transaction if kind == "query" else connection.command_transaction)
            if "transaction" in m:
                op.transaction = self.attempt(self.transaction_ref, m["transaction"][1], f"{key}.transaction")
            else:
                op.transaction = default_t
            t = op.transaction
            if t is not None:
                has_reply = any(s.action == "reply" for s in t.steps)
                if kind == "query" and not has_reply:
                    self.problem(node, key, f"transaction {t.name!r} has no 'reply' step, so a query cannot use it")
                if kind == "command" and has_reply and op.reply is None:
                    self.problem(node, key, f"transaction {t.name!r} reads a reply: give the command a 'reply'")
        elif "transaction" in m:
            self.problem(m["transaction"][0], f"{key}.transaction", "only for protocol: text")
        if kind == "command" and op.reply is not None and protocol == "text" and op.transaction is None:
            pass  # a command with a reply: send, then read the reply
        if "timeout" in m:
            op.timeout = self.attempt(self.number, m["timeout"][1], f"{key}.timeout", False, 0)
        if "attempts" in m:
            op.attempts = self.attempt(self.number, m["attempts"][1], f"{key}.attempts", True, 1, default=1)
        if "writes" in m:
            w = self.attempt(self.boolean, m["writes"][1], f"{key}.writes")
            if w is not None:
                if kind == "command" and not w:
                    self.problem(m["writes"][1], f"{key}.writes", "a command always writes; use a query for a read")
                op.writes = w
        if "check_errors" in m:
            op.check_errors = self.attempt(self.boolean, m["check_errors"][1], f"{key}.check_errors")
        if "sim" in m:
            op.sim_sets = self.attempt(self.op_sim, m["sim"][1], f"{key}.sim", names, default=None)
        if "guard" in m:
            self.guards.append((op, m["guard"][1], f"{key}.guard"))
        return op

    GUARD_CHECK = ("when", "query", "args", "field", "min", "max", "below", "above", "equals", "message")

    def guard(self, op, node, key, operations):
        """Checked after every operation is known (a guard names a query)."""
        m = self.mapping(node, key, ("skip_if", "checks"), required=("checks",))
        g = GuardSpec([])
        if "skip_if" in m:
            g.skip_if = self.string(m["skip_if"][1], f"{key}.skip_if")
            arg = op.arg_map.get(g.skip_if)
            if arg is None or arg.type != "bool":
                self.fail(m["skip_if"][1], f"{key}.skip_if", f"must name a bool argument of {op.name!r}, got {g.skip_if!r}")
        if "checks" not in m:
            raise _Skip
        for i, item in enumerate(self.seq(m["checks"][1], f"{key}.checks")):
            k = f"{key}.checks[{i}]"
            cm = self.mapping(item, k, self.GUARD_CHECK, required=("query", "field", "message"))
            if not all(x in cm for x in ("query", "field", "message")):
                continue
            qname = self.string(cm["query"][1], f"{k}.query")
            if qname in self.damaged:
                continue
            q = operations.get(qname)
            if q is None or q.writes:
                self.problem(cm["query"][1], f"{k}.query", f"{qname!r} is not a read-only query of this device")
                continue
            fname = self.string(cm["field"][1], f"{k}.field")
            if fname not in {f.name for f in q.fields}:
                self.problem(cm["field"][1], f"{k}.field", f"{qname!r} has no field {fname!r}")
                continue
            when = {}
            if "when" in cm:
                for an, (aknode, av) in self.items(cm["when"][1], f"{k}.when").items():
                    arg = op.arg_map.get(an)
                    if arg is None:
                        self.problem(aknode, f"{k}.when.{an}", f"{op.name!r} has no argument {an!r}")
                        continue
                    try:
                        when[an] = arg.check(self.plain(av, f"{k}.when.{an}"))
                    except (TypeError, ValueError) as e:
                        self.problem(av, f"{k}.when.{an}", str(e))
            qargs = {}
            if "args" in cm:
                raw = {an: self.plain(av, f"{k}.args.{an}") for an, (_, av) in self.items(cm["args"][1], f"{k}.args").items()}
                try:
                    qargs = q.check_args(**raw)
                except (TypeError, ValueError) as e:
                    self.problem(cm["args"][1], f"{k}.args", str(e))
                    continue
            check = GuardCheck(when, qname, qargs, fname, message=self.string(cm["message"][1], f"{k}.message"),
                               line=item.start_mark.line + 1)
            for b in ("min", "max", "below", "above"):
                if b in cm:
                    setattr(check, b, self.number(cm[b][1], f"{k}.{b}"))
            if "equals" in cm:
                check.equals = self.plain(cm["equals"][1], f"{k}.equals")
            if all(getattr(check, b) is None for b in ("min", "max", "below", "above", "equals")):
                self.problem(item, k, "needs a bound: min, max, below, above or equals")
                continue
            g.checks.append(check)
        return g

    def op_sim(self, node, key, names):
        m = self.mapping(node, key, ("sets",))
        out = {}
        if "sets" in m:
            for var, (knode, vnode) in self.items(m["sets"][1], f"{key}.sets").items():
                if isinstance(vnode, yaml.MappingNode):
                    sm = self.mapping(vnode, f"{key}.sets.{var}", ("from", "map"), required=("from",))
                    src = self.string(sm["from"][1], f"{key}.sets.{var}.from") if "from" in sm else None
                    if src is not None and src not in names:
                        self.problem(sm["from"][1], f"{key}.sets.{var}.from", f"unknown argument {src!r}")
                    table = {str(k): self.plain(v, f"{key}.sets.{var}.map.{k}")
                             for k, (_, v) in self.items(sm["map"][1], f"{key}.sets.{var}.map").items()} \
                        if "map" in sm else {}
                    self.state_template(knode, f"{key}.sets.{var}", var, names)
                    out[var] = {"from": src, "map": table}
                    continue
                expr = self.plain(vnode, f"{key}.sets.{var}")
                if isinstance(expr, str) and expr.startswith("{") and expr.endswith("}"):
                    arg = expr[1:-1]
                    if arg not in names:
                        self.problem(vnode, f"{key}.sets.{var}", f"unknown argument {{{arg}}}")
                self.state_template(knode, f"{key}.sets.{var}", var, names)
                out[var] = expr
            for var, (knode, _) in self.items(m["sets"][1], f"{key}.sets").items():
                self.set_targets.append((knode, f"{key}.sets.{var}", var))
        return out

    def params_section(self, node):
        """Top-level ``params``: values given per device instance, used in text templates."""
        before = len(self.problems)
        out = self.args(node, "params", "text")
        if len(self.problems) > before and isinstance(node, yaml.MappingNode):
            # a param with a problem of its own is still a name the templates may use
            self.param_names = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        for p in out:
            p.kind = "param"
            if p.required:
                self.problem(node, f"params.{p.name}", "a param needs a 'default' (the value when none is given)")
        return out

    def check_set_targets(self, operations):
        """Every state variable a command sets is read by some field (its ``sim.state``, or a flag of that
        name): else the simulator's setter would change nothing a query returns."""
        readers = set()
        for op in operations.values():
            for f in op.value_fields:
                if f.sim is not None and f.sim.state:
                    readers.add(f.sim.state)
                readers.update(f.flags or ())
        skeletons = {_state_skeleton(r): r for r in readers}
        for knode, key, var in self.set_targets:
            pattern = _state_regex(var)
            if any(pattern.fullmatch(sk) or _state_regex(r).fullmatch(_state_skeleton(var))
                   for sk, r in skeletons.items()):
                continue
            shown = ", ".join(sorted(readers)) or "none"
            self.problem(knode, key, f"no field reads the state variable {var!r}, so setting it changes no reply "
                                     f"(fields read: {shown}; give the field sim: {{state: ...}})")

    def state_template(self, node, key, template, names):
        for n in self.placeholders(node, key, template):
            if n not in names:
                self.fail(node, key, f"state name {template!r} uses {{{n}}}, which is not an argument")

    ARG = ("type", "default", "min", "max", "choices", "enum", "unit", "description", "format", "true_text",
           "false_text", "max_length", "pattern")

    def args(self, node, key, protocol):
        out = []
        for name, (knode, vnode) in self.items(node, key).items():
            k = f"{key}.{name}"
            if not _NAME.match(name):
                self.problem(knode, k, f"{name!r} is not a valid name (a letter, then letters, digits or _)")
                continue
            if name == "request":
                self.problem(knode, k, "'request' is reserved (it stands for the formatted request in transactions)")
                continue
            if key != "params" and name in self.param_names:
                self.problem(knode, k, f"{name!r} is a param of the device; an argument needs another name")
                continue
            arg = self.attempt(self.arg, vnode, k, name, "param" if key == "params" else "argument")
            if arg is not None:
                out.append(arg)
        return out

    def arg(self, node, key, name, kind="argument"):
        if isinstance(node, yaml.ScalarNode):
            t = self.string(node, key)
            if t not in ARG_TYPES:
                hint = (f"; a param is declared like an argument, with its default: {name}: {{type: int, default: {t}}}"
                        if kind == "param" else "")
                self.fail(node, key, f"unknown type {t!r} (one of: {', '.join(ARG_TYPES)}){hint}")
            if t == "enum":
                self.fail(node, key, f"an enum {kind} needs 'choices' or 'enum'")
            if kind == "param":
                self.fail(node, key, f"a param needs a 'default': {name}: {{type: {t}, default: ...}}")
            return ArgSpec(name, t, line=node.start_mark.line + 1, kind=kind)
        m = self.mapping(node, key, self.ARG)
        t = None
        if "type" in m:
            t = self.string(m["type"][1], f"{key}.type")
            if t not in ARG_TYPES:
                self.fail(m["type"][1], key, f"unknown type {t!r} (one of: {', '.join(ARG_TYPES)})")
        elif "choices" in m or "enum" in m:
            t = "enum"
        else:
            self.fail(node, key, "missing required key 'type'")
        a = ArgSpec(name, t, line=node.start_mark.line + 1, kind=kind)
        if t == "enum":
            if "choices" in m and "enum" in m:
                self.fail(node, key, "give 'choices' or 'enum', not both")
            if "choices" in m:
                a.values = self.enum_values(m["choices"][1], f"{key}.choices")
            elif "enum" in m:
                ename = self.string(m["enum"][1], f"{key}.enum")
                if ename not in self.enums:
                    self.fail(m["enum"][1], f"{key}.enum", f"unknown enum {ename!r}"
                              + (f" (defined: {', '.join(self.enums)})" if self.enums else " (no 'enums' section)"))
                a.values = self.enums[ename]
            else:
                self.fail(node, key, "an enum argument needs 'choices' or 'enum'")
            a.choices = list(a.values)
        else:
            for k in ("choices", "enum"):
                if k in m:
                    self.problem(m[k][0], f"{key}.{k}", f"only for type enum (this is {t})")
        for k in ("min", "max"):
            if k in m:
                if t not in ("int", "float"):
                    self.problem(m[k][0], f"{key}.{k}", f"only for int and float (this is {t})")
                else:
                    setattr(a, k, self.number(m[k][1], f"{key}.{k}", integer=(t == "int")))
        if a.min is not None and a.max is not None and a.min > a.max:
            self.problem(node, key, f"min {a.min} is above max {a.max}")
        for k in ("true_text", "false_text"):
            if k in m:
                if t != "bool":
                    self.problem(m[k][0], f"{key}.{k}", f"only for type bool (this is {t})")
                else:
                    setattr(a, k, self.string(m[k][1], f"{key}.{k}"))
        for k in ("max_length", "pattern"):
            if k in m:
                if t != "str":
                    self.problem(m[k][0], f"{key}.{k}", f"only for type str (this is {t})")
                elif k == "max_length":
                    a.max_length = self.number(m[k][1], f"{key}.{k}", integer=True, minimum=1)
                else:
                    a.pattern = self.regex(m[k][1], f"{key}.{k}").pattern
        if "unit" in m:
            a.unit = self.string(m["unit"][1], f"{key}.unit")
        if "description" in m:
            a.description = self.string(m["description"][1], f"{key}.description")
        if "format" in m:
            a.format = self.string(m["format"][1], f"{key}.format")
            sample = {"int": 1, "float": 1.5, "str": "x", "bool": "1"}.get(t)
            if t == "enum":
                sample = next(iter(a.values.values()))
            try:
                format(sample, a.format)
            except (ValueError, TypeError) as e:
                self.fail(m["format"][1], f"{key}.format", f"bad format {a.format!r} for a {t}: {e}")
        if "default" in m:
            v = self.value(m["default"][1], f"{key}.default")
            if v is not None:
                try:
                    v = a.check(v)
                except (TypeError, ValueError) as e:
                    self.fail(m["default"][1], f"{key}.default", f"bad default: {e}")
            a.default = v
        return a

    def text_request(self, node, key, names):
        template = self.string(node, key, allow_empty=False)
        used = self.placeholders(node, key, template)
        for n in used:
            if n not in names and n not in self.param_names:
                self.fail(node, key, f"placeholder {{{n}}} is not an argument"
                          + (f" (arguments: {', '.join(sorted(names))})" if names else " (this operation has none)")
                          + (f" or a param ({', '.join(sorted(self.param_names))})" if self.param_names else ""))
        return template

    def binary_request(self, node, key, args):
        """A list of items: a byte (0..255), a hex string 'hex: 3001', {arg, wire, order} or {checksum, from, order}."""
        items = []
        offset = 0                            # where the next item starts in the request
        for i, item in enumerate(self.seq(node, key)):
            if items:
                offset += items[-1].size
            k = f"{key}[{i}]"
            if isinstance(item, yaml.ScalarNode):
                v = self.value(item, k)
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
                    self.fail(item, k, f"a literal byte must be an integer 0..255, got {item.value!r}")
                items.append(RequestItem(literal=bytes([v])))
                continue
            m = self.mapping(item, k, ("arg", "wire", "order", "hex", "checksum", "from", "scale", "offset"))
            if "checksum" in m:
                for other in ("arg", "wire", "hex", "scale", "offset"):
                    if other in m:
                        self.fail(m[other][0], f"{k}.{other}", "not with 'checksum'")
                c = self.checksum(m, k, "checksum")
                if c.start >= offset:
                    self.fail(m["from"][1] if "from" in m else item, f"{k}.from",
                              f"the checksum at byte {offset} must cover at least one byte before it "
                              f"(from {c.start})")
                items.append(RequestItem(checksum=c))
                continue
            if "from" in m:
                self.problem(m["from"][0], f"{k}.from", "only with 'checksum'")
            if "hex" in m:
                if len(m) != 1:
                    self.fail(item, k, "'hex' stands alone")
                items.append(RequestItem(literal=self.hex_bytes(m["hex"][1], f"{k}.hex")))
                continue
            if "arg" not in m:
                self.fail(item, k, "an item is a byte, {hex: ...}, {arg: NAME, wire: TYPE} or {checksum: NAME}")
            aname = self.string(m["arg"][1], f"{k}.arg")
            if aname not in args:
                self.fail(m["arg"][1], f"{k}.arg", f"unknown argument {aname!r}")
            wire = self.choice(m["wire"][1], f"{k}.wire", tuple(WIRE_TYPES), "wire type") if "wire" in m else "u8"
            order = self.choice(m["order"][1], f"{k}.order", BYTE_ORDERS, "byte order") if "order" in m else "big"
            arg = args[aname]
            it = RequestItem(arg=aname, wire=wire, order=order)
            for sk in ("scale", "offset"):
                if sk in m:
                    setattr(it, sk, self.number(m[sk][1], f"{k}.{sk}"))
                    if arg.type not in ("float", "int"):
                        self.fail(m[sk][0], f"{k}.{sk}", f"argument {aname!r} is {arg.type}; only numbers are scaled")
            if it.scale == 0:
                self.fail(m["scale"][1], f"{k}.scale", "must not be 0")
            if wire.startswith("f") and arg.type not in ("float", "int"):
                self.fail(item, k, f"argument {aname!r} is {arg.type}; a {wire} needs int or float")
            if not wire.startswith("f"):
                self.check_int_fits(item, k, arg, wire, it)
            items.append(it)
        if not items:
            self.fail(node, key, "a binary request needs at least one byte")
        return items

    def checksum(self, m, key, type_key):
        """A checksum: ``m[type_key]`` names the algorithm; ``from`` and ``order`` are optional."""
        tnode = m[type_key][1]
        name = self.string(tnode, f"{key}.{type_key}")
        if name not in CHECKSUMS:
            self.fail(tnode, f"{key}.{type_key}", f"unknown checksum {name!r} (one of: {', '.join(CHECKSUMS)})")
        c = ChecksumSpec(name, order="little" if name == "crc16_modbus" else "big")
        if "from" in m:
            c.start = self.number(m["from"][1], f"{key}.from", integer=True, minimum=0)
        if "order" in m:
            c.order = self.choice(m["order"][1], f"{key}.order", ("big", "little"), "byte order")
        return c

    def text_checksum(self, node, key):
        m = self.mapping(node, key, ("type", "format", "from", "separator"), required=("type", "format"))
        if "type" not in m or "format" not in m:
            raise _Skip
        c = self.checksum(m, key, "type")
        fnode = m["format"][1]
        if not (isinstance(fnode, yaml.ScalarNode) and fnode.style in ("'", '"')) and fnode.value.isdigit():
            self.fail(fnode, f"{key}.format", f"{fnode.value} is a number to YAML; a format spec is text ending in "
                                              f"d, x, X, o or b: write \"0{fnode.value}d\" or \"0{fnode.value}X\"")
        c.format = self.string(fnode, f"{key}.format", allow_empty=False)
        kind = c.format[-1:]
        if kind not in ("d", "x", "X", "o", "b"):
            self.fail(fnode, f"{key}.format", f"{c.format!r} is not a format of a number in digits: end it with d, "
                                              f"x, X, o or b (\"03d\": three decimal digits, \"02X\": two hex digits)")
        most = (1 << (8 * c.size)) - 1
        try:
            low, high = format(0, c.format), format(most, c.format)
        except (ValueError, TypeError) as e:
            self.fail(fnode, f"{key}.format", f"bad format {c.format!r}: {e}")
        if len(low) != len(high):
            self.fail(fnode, f"{key}.format", f"{c.format!r} does not give every {c.type} value the same width "
                                              f"(0 is {low!r}, {most} is {high!r}); pad it: "
                                              f"'0{len(high)}{kind}'")
        if "separator" in m:
            c.separator = self.string(m["separator"][1], f"{key}.separator")
        return c

    def check_int_fits(self, node, key, arg, wire, item=None):
        size = WIRE_TYPES[wire][0]
        signed = wire.startswith("i")
        lo, hi = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (0, (1 << (8 * size)) - 1)
        if item is not None and (item.scale is not None or item.offset is not None) and arg.type in ("int", "float"):
            if arg.min is None or arg.max is None:
                self.problem(node, key, f"argument {arg.name!r} needs min and max to fit a scaled {wire}")
                return
            raw = sorted(round((v - (item.offset or 0)) / (item.scale or 1)) for v in (arg.min, arg.max))
            if raw[0] < lo or raw[1] > hi:
                self.problem(node, key, f"argument {arg.name!r} from {arg.min} to {arg.max} is sent as {raw[0]}..{raw[1]}, "
                                        f"beyond a {wire} ({lo}..{hi})")
            return
        if arg.type == "int":
            if arg.min is None or arg.max is None or arg.min < lo or arg.max > hi:
                self.problem(node, key, f"argument {arg.name!r} needs min and max within {lo}..{hi} to fit a {wire}")
        elif arg.type == "enum":
            for k, v in arg.values.items():
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                    self.problem(node, key, f"choice {k!r} of {arg.name!r} sends {v!r}, not an integer for a {wire}")
                    break
        elif arg.type == "bool":
            pass
        else:
            self.problem(node, key, f"argument {arg.name!r} is {arg.type}; a {wire} needs int, enum or bool")

    def modbus_request(self, node, key, kind, names):
        m = self.mapping(node, key, ("function", "address", "count", "value"), required=("function", "address"))
        if "function" not in m or "address" not in m:
            raise _Skip
        fn = self.number(m["function"][1], f"{key}.function", integer=True)
        if fn not in (3, 4, 6):
            self.fail(m["function"][1], f"{key}.function",
                      f"unsupported function {fn} (3 read holding registers, 4 read input registers, 6 write register)")
        addr = self.number(m["address"][1], f"{key}.address", integer=True, minimum=0)
        if addr > 0xFFFF:
            self.fail(m["address"][1], f"{key}.address", f"must be in 0..65535, got {addr}")
        spec = ModbusSpec(fn, addr)
        if fn in (3, 4):
            if "count" not in m:
                self.fail(node, key, f"function {fn} needs 'count' (registers to read)")
            spec.count = self.number(m["count"][1], f"{key}.count", integer=True, minimum=1)
            if spec.count > 125:
                self.fail(m["count"][1], f"{key}.count", f"at most 125 registers per read, got {spec.count}")
            if "value" in m:
                self.problem(m["value"][0], f"{key}.value", "only for function 6")
        else:
            if "value" not in m:
                self.fail(node, key, "function 6 needs 'value' (a number or {argument})")
            v = self.value(m["value"][1], f"{key}.value")
            if isinstance(v, str):
                if not (v.startswith("{") and v.endswith("}") and v[1:-1] in names):
                    self.fail(m["value"][1], f"{key}.value", f"must be a number or {{argument}}, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
                self.fail(m["value"][1], f"{key}.value", f"must be 0..65535 or {{argument}}, got {v!r}")
            spec.value = v
            if "count" in m:
                self.problem(m["count"][0], f"{key}.count", "only for functions 3 and 4")
        return spec

    # -- replies ---------------------------------------------------------
    REPLY = ("split", "regex", "format", "strip", "fields", "length", "checksum", "starts_with", "error")
    FIELD = ("type", "unit", "description", "alarm", "warning", "map", "enum", "flags", "flag_type", "array",
             "status", "scale", "offset", "true_text", "false_text", "base", "wire", "byte", "register", "order",
             "exponent", "sim")

    def reply(self, node, key, op_name, protocol, op):
        if isinstance(node, yaml.ScalarNode):
            # shorthand: the type of one field named after the operation
            t = self.string(node, key)
            if t not in FIELD_TYPES:
                self.fail(node, key, f"unknown type {t!r} (one of: {', '.join(FIELD_TYPES)})")
            if protocol != "text":
                self.fail(node, key, "a binary reply needs 'length' and 'fields'")
            return ReplySpec("single", fields=[FieldSpec(op_name, t, line=node.start_mark.line + 1)])
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"must be a type or a mapping, got {self.describe(node)}")
        keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        if "fields" not in keys and not keys & {"split", "regex", "length", "checksum", "starts_with"}:
            # shorthand: one field described in place
            f = self.field(node, key, op_name, protocol, op)
            return ReplySpec("single", fields=[f])
        m = self.mapping(node, key, self.REPLY, required=("fields",))
        if "fields" not in m:
            raise _Skip
        r = ReplySpec()
        if protocol == "text":
            for k in ("length", "checksum", "starts_with", "error"):
                if k in m:
                    self.problem(m[k][0], f"{key}.{k}", "only for protocol: binary")
            if "split" in m and "regex" in m:
                self.fail(node, key, "give 'split' or 'regex', not both")
            if "split" in m:
                r.mode = "split"
                r.split = self.string(m["split"][1], f"{key}.split", allow_empty=False)
            elif "regex" in m:
                r.mode = "regex"
                r.regex = self.regex(m["regex"][1], f"{key}.regex")
            if "strip" in m:
                r.strip = self.boolean(m["strip"][1], f"{key}.strip")
        else:
            r.mode = protocol
            for k in ("split", "regex", "strip"):
                if k in m:
                    self.problem(m[k][0], f"{key}.{k}", "only for protocol: text")
            if protocol == "binary":
                if "length" not in m:
                    self.fail(node, key, "a binary reply needs 'length' (bytes, or {byte: N, wire: u8, plus: K})")
                if isinstance(m["length"][1], yaml.MappingNode):
                    r.length_field = self.length_field(m["length"][1], f"{key}.length")
                else:
                    r.length = self.number(m["length"][1], f"{key}.length", integer=True, minimum=1)
                if "checksum" in m:
                    r.checksum = self.reply_checksum(m["checksum"][1], f"{key}.checksum", r)
                if "error" in m:
                    r.error = self.attempt(self.error_reply, m["error"][1], f"{key}.error", r)
                if "starts_with" in m:
                    r.starts_with, r.starts_any = self.hex_pattern(m["starts_with"][1], f"{key}.starts_with")
                    most = r.length if r.length is not None else r.length_field.max
                    n = r.length_field
                    if len(r.starts_with) > most:
                        self.problem(m["starts_with"][1], f"{key}.starts_with",
                                     f"{len(r.starts_with)} bytes are longer than the reply ({most})")
                    elif n is not None and any(n.byte <= i < n.header and i not in r.starts_any
                                               for i in range(len(r.starts_with))):
                        self.problem(m["starts_with"][1], f"{key}.starts_with",
                                     f"it reaches the length field (bytes {n.byte}..{n.header - 1}), which the device "
                                     f"fills in: write ?? for those bytes")
            else:
                for k, why in (("length", "a modbus reply's length follows from 'count'"),
                               ("checksum", "Modbus TCP frames have no checksum (TCP checks them)"),
                               ("starts_with", "the driver checks a Modbus reply's header itself")):
                    if k in m:
                        self.problem(m[k][0], f"{key}.{k}", why)
        entries = self.items(m["fields"][1], f"{key}.fields")
        if not entries:
            self.fail(m["fields"][1], f"{key}.fields", "needs at least one field")
        for fname, (knode, vnode) in entries.items():
            k = f"{key}.fields.{fname}"
            if not _NAME.match(fname):
                self.problem(knode, k, f"{fname!r} is not a valid field name (a letter, then letters, digits or _)")
                continue
            f = self.attempt(self.field, vnode, k, fname, protocol, op)
            if f is not None:
                r.fields.append(f)
        if r.mode == "regex":
            groups = set(r.regex.groupindex)
            for f in r.fields:
                if f.name not in groups:
                    self.problem(m["regex"][1], f"{key}.regex", f"has no group (?P<{f.name}>...) for field {f.name!r}")
            if "format" in m:
                r.format = self.string(m["format"][1], f"{key}.format")
                for n in self.placeholders(m["format"][1], f"{key}.format", r.format):
                    if n not in groups and n not in self.param_names:
                        self.problem(m["format"][1], f"{key}.format", f"placeholder {{{n}}} is not a group of the regex"
                                     + (" or a param" if self.param_names else ""))
                self.check_specs(m["format"][1], f"{key}.format", r.format, {})
                for _, n, spec, _ in string.Formatter().parse(r.format):
                    if n in groups and spec:
                        try:
                            format("0", spec)
                        except ValueError:
                            self.problem(m["format"][1], f"{key}.format",
                                         f"placeholder {{{n}:{spec}}}: the simulator writes a field as its reply text, "
                                         f"so only a text spec works ('0>6' pads with zeros; a field's 'base: 16' "
                                         f"writes hex)")
                if r.regex is not None and any("{" + n in r.regex.pattern for n in self.param_names):
                    self.problem(m["regex"][1], f"{key}.regex", "params are not filled into a regex; match their "
                                                                "value with a pattern (\\d{3} for an address)")
            else:
                r.format = _format_from_regex(r.regex.pattern)
                if r.format is None:
                    self.problem(m["regex"][1], f"{key}.regex",
                                 "too complex to derive the simulator's reply from; add 'format' (e.g. '{a},{b}')")
        elif "format" in m:
            self.problem(m["format"][0], f"{key}.format", "only with 'regex'")
        if r.mode == "split":
            arrays = [f for f in r.fields if f.array is not None and f.array.count is None]
            if arrays and r.fields[-1] is not arrays[-1] or len(arrays) > 1:
                self.problem(node, f"{key}.fields", "a field whose length the device decides (array without 'count') "
                                                    "must be the last field")
        if r.mode in ("single", "regex"):
            for f in r.fields:
                if f.array is not None or f.status is not None:
                    self.problem(node, f"{key}.fields.{f.name}", "'array' and 'status' need 'split'")
        if r.mode == "binary":
            self.check_binary_layout(node, key, r)
        if r.mode == "modbus" and op.modbus is not None and op.modbus.count is not None:
            start, count = op.modbus.address, op.modbus.count
            for f in r.fields:
                regs = WIRE_TYPES[f.wire][0] // 2 or 1
                regs *= f.array.size if f.array else 1
                if f.register < start or f.register + regs > start + count:
                    self.problem(node, f"{key}.fields.{f.name}",
                                 f"registers {f.register}..{f.register + regs - 1} are outside the ones read "
                                 f"({start}..{start + count - 1})")
        self.check_unique(node, key, r.fields)
        return r

    def error_reply(self, node, key, reply):
        m = self.mapping(node, key, ("starts_with", "length", "code", "messages", "sim_code"),
                         required=("starts_with", "length", "code"))
        if not all(k in m for k in ("starts_with", "length", "code")):
            raise _Skip
        prefix = self.hex_bytes(m["starts_with"][1], f"{key}.starts_with")
        length = self.number(m["length"][1], f"{key}.length", integer=True, minimum=len(prefix) + 1)
        cm = self.mapping(m["code"][1], f"{key}.code", ("byte", "wire", "order"), required=("byte",))
        if "byte" not in cm:
            raise _Skip
        e = ErrorReplySpec(prefix, length, self.number(cm["byte"][1], f"{key}.code.byte", integer=True, minimum=0))
        if "wire" in cm:
            e.code_wire = self.choice(cm["wire"][1], f"{key}.code.wire", ("u8", "u16", "u32", "i8", "i16", "i32"),
                                      "wire type")
        if "order" in cm:
            e.code_order = self.choice(cm["order"][1], f"{key}.code.order", ("big", "little"), "byte order")
        end = length - (reply.checksum.size if reply.checksum is not None and reply.checksum.byte < 0 else 0)
        if e.code_byte + WIRE_TYPES[e.code_wire][0] > end:
            self.fail(cm["byte"][1], f"{key}.code.byte", f"the code (byte {e.code_byte}, a {e.code_wire}) does not "
                                                         f"fit an error frame of {length} bytes"
                                                         + (" with its checksum" if end < length else ""))
        if "messages" in m:
            for k, (knode, v) in self.items(m["messages"][1], f"{key}.messages").items():
                try:
                    e.messages[int(str(k), 0)] = self.string(v, f"{key}.messages.{k}")
                except ValueError:
                    self.problem(knode, f"{key}.messages.{k}", f"{k!r} is not an integer code")
        if "sim_code" in m:
            e.sim_code = self.number(m["sim_code"][1], f"{key}.sim_code", integer=True, minimum=0)
        return e

    def hex_pattern(self, node, key):
        """Hex bytes where ``??`` stands for any byte: ``(bytes, positions of ??)``."""
        text = self.string(node, key, allow_empty=False)
        tokens = [t if t == "??" else t[i:i + 2] for t in text.split() for i in range(0, len(t), 2)]
        out, anywhere = bytearray(), set()
        for token in tokens:
            if token == "??":
                anywhere.add(len(out))
                out.append(0)
                continue
            try:
                if len(token) != 2:
                    raise ValueError
                out.append(int(token, 16))
            except ValueError:
                self.fail(node, key, f"not hex digits: {text!r} (bytes as two hex digits, ?? for any byte)")
        if len(anywhere) == len(out):
            self.fail(node, key, f"{text!r} takes any byte: give at least one")
        return bytes(out), frozenset(anywhere)

    def hex_bytes(self, node, key):
        """Hex bytes, every one given (no ``??``)."""
        data, anywhere = self.hex_pattern(node, key)
        if anywhere:
            self.fail(node, key, "?? (any byte) is only for a reply's starts_with")
        return data

    def length_field(self, node, key):
        m = self.mapping(node, key, ("byte", "wire", "order", "plus", "max"), required=("byte",))
        if "byte" not in m:
            raise _Skip
        n = LengthSpec(self.number(m["byte"][1], f"{key}.byte", integer=True, minimum=0))
        if "wire" in m:
            n.wire = self.choice(m["wire"][1], f"{key}.wire", ("u8", "u16", "u32"), "length wire type")
        if "order" in m:
            n.order = self.choice(m["order"][1], f"{key}.order", ("big", "little"), "byte order")
        if "plus" in m:
            n.plus = self.number(m["plus"][1], f"{key}.plus", integer=True)
        longest = min((1 << (8 * WIRE_TYPES[n.wire][0])) - 1 + n.plus, 65536)
        if "max" in m:
            n.max = self.number(m["max"][1], f"{key}.max", integer=True, minimum=n.header)
            if n.max > longest:
                self.problem(m["max"][1], f"{key}.max", f"{n.max} is more than a reply can be (at most {longest} bytes: "
                                                        f"the {n.wire} length field's largest value + plus, or 65536)")
                n.max = longest
        else:
            n.max = longest
        if n.max < n.header or longest < n.header:
            self.fail(node, key, f"a frame of at most {min(n.max, longest)} bytes cannot hold its length field "
                                 f"(bytes {n.byte}..{n.header - 1})")
        return n

    def reply_checksum(self, node, key, reply):
        if isinstance(node, yaml.ScalarNode):
            m = {"type": (node, node)}
        else:
            m = self.mapping(node, key, ("type", "from", "byte", "order"), required=("type",))
            if "type" not in m:
                raise _Skip
        c = self.checksum(m, key, "type")
        c.byte = -c.size
        if "byte" in m:
            c.byte = self.number(m["byte"][1], f"{key}.byte", integer=True)
        if reply.length is not None:
            pos = c.position(reply.length)
            if pos < 0 or pos + c.size > reply.length:
                self.fail(m["byte"][1] if "byte" in m else node, f"{key}.byte",
                          f"a {c.size}-byte checksum at byte {c.byte} does not fit the reply of {reply.length} bytes")
            if c.start >= pos:
                self.fail(m["from"][1] if "from" in m else node, f"{key}.from",
                          f"the checksum at byte {pos} must cover at least one byte before it (from {c.start})")
        else:
            n = reply.length_field
            if c.byte >= 0 and c.byte < n.header:
                self.fail(m["byte"][1], f"{key}.byte", f"byte {c.byte} is inside the length field's header "
                                                       f"(bytes 0..{n.header - 1})")
            if c.byte >= 0 and c.byte + c.size > n.max:
                self.fail(m["byte"][1], f"{key}.byte", f"a {c.size}-byte checksum at byte {c.byte} does not fit a "
                                                       f"reply of at most {n.max} bytes")
            if c.start >= n.header:
                self.fail(m["from"][1], f"{key}.from", f"from {c.start} is past the length field (bytes "
                                                       f"{n.byte}..{n.header - 1}): a short reply would have "
                                                       f"nothing to check")
        return c

    def check_binary_layout(self, node, key, r):
        """Fields lie inside the reply and clear of the checksum; a field whose length the
        device decides (``array: {max: N}``) is the last one and needs a length field."""
        fixed = r.length
        csum = r.checksum
        at = None                             # where the checksum starts, when that is known on load
        if csum is not None:
            at = csum.position(fixed) if fixed is not None else (csum.byte if csum.byte >= 0 else None)
        variable = [f for f in r.fields if f.array is not None and f.array.count is None]
        for f in r.fields:
            k = f"{key}.fields.{f.name}"
            size = WIRE_TYPES[f.wire][0]
            if any(f is v for v in variable):
                if fixed is not None:
                    self.problem(f.line or node, k, "an array whose length the device decides (array: {max: N}) needs a "
                                          "reply 'length' given by the device ({byte: N, wire: u8, plus: K})")
                elif any(o.byte >= f.byte for o in r.fields if o is not f):
                    self.problem(f.line or node, k, "an array whose length the device decides must be the last field "
                                          "of the reply (by byte)")
                continue
            size *= f.array.size if f.array else 1
            last = f.byte + size - 1
            if fixed is not None and last >= fixed:
                self.problem(f.line or node, k, f"bytes {f.byte}..{last} are beyond the reply length {fixed}")
            elif at is not None and f.byte < at + csum.size and last >= at:
                self.problem(f.line or node, k, f"bytes {f.byte}..{last} overlap the checksum (bytes {at}..{at + csum.size - 1})")
            elif fixed is None:
                tail = -csum.byte if csum is not None and csum.byte < 0 else 0
                if f.byte + size > r.length_field.max - tail:
                    self.problem(f.line or node, k, f"bytes {f.byte}..{last} do not fit a reply of at most "
                                          f"{r.length_field.max} bytes" + (" with its checksum" if tail else ""))

    def check_unique(self, node, key, fields):
        seen = set()
        for f in self.expand_fields(fields):
            if f.name in seen:
                self.problem(node, key, f"field name {f.name!r} is used twice (flags and status fields are fields too)")
            seen.add(f.name)

    def field(self, node, key, name, protocol, op):
        if isinstance(node, yaml.ScalarNode):
            t = self.string(node, key)
            if protocol != "text":
                self.fail(node, key, "a binary field needs 'wire' and a position")
            if t not in FIELD_TYPES:
                self.fail(node, key, f"unknown type {t!r} (one of: {', '.join(FIELD_TYPES)})")
            return FieldSpec(name, t, line=node.start_mark.line + 1)
        m = self.mapping(node, key, self.FIELD)
        f = FieldSpec(name, line=node.start_mark.line + 1)
        explicit_type = None
        if "type" in m:
            explicit_type = self.string(m["type"][1], f"{key}.type")
            if explicit_type not in FIELD_TYPES:
                self.fail(m["type"][1], key, f"unknown type {explicit_type!r} (one of: {', '.join(FIELD_TYPES)})")
        if protocol == "text":
            for k in ("wire", "byte", "register", "order"):
                if k in m:
                    self.problem(m[k][0], f"{key}.{k}", "only for binary and modbus replies")
            f.type = explicit_type or "str"
        else:
            if "wire" not in m:
                self.fail(node, key, f"missing required key 'wire' (one of: {', '.join(WIRE_TYPES)})")
            f.wire = self.choice(m["wire"][1], f"{key}.wire", tuple(WIRE_TYPES), "wire type")
            pos = "byte" if protocol == "binary" else "register"
            other = "register" if protocol == "binary" else "byte"
            if other in m:
                self.problem(m[other][0], f"{key}.{other}", f"a {protocol} field is placed by '{pos}'")
            if pos not in m:
                self.fail(node, key, f"missing required key {pos!r}")
            setattr(f, pos, self.number(m[pos][1], f"{key}.{pos}", integer=True, minimum=0))
            if "order" in m:
                f.order = self.choice(m["order"][1], f"{key}.order", BYTE_ORDERS, "byte order")
                if f.order in ("CDAB", "BADC") and WIRE_TYPES[f.wire][0] != 4:
                    self.problem(m["order"][1], f"{key}.order", f"{f.order} is for 32-bit values, not {f.wire}")
            if protocol == "modbus" and f.wire in ("u8", "i8"):
                self.problem(m["wire"][1], f"{key}.wire", "modbus registers are 16 bits: use u16/i16 or wider")
            default_type = "float" if f.wire.startswith("f") else "int"
            if ("scale" in m or "offset" in m) and explicit_type is None:
                default_type = "float"
            f.type = explicit_type or default_type
        if "true_text" in m or "false_text" in m:
            if f.type != "bool":
                k = "true_text" if "true_text" in m else "false_text"
                self.problem(m[k][0], f"{key}.{k}", f"only for type bool (this is {f.type})")
            f.true_text = self.string(m["true_text"][1], f"{key}.true_text") if "true_text" in m else None
            f.false_text = self.string(m["false_text"][1], f"{key}.false_text") if "false_text" in m else None
        if "base" in m:
            f.base = self.number(m["base"][1], f"{key}.base", integer=True, minimum=2)
            if f.base > 36:
                self.problem(m["base"][1], f"{key}.base", f"must be in 2..36, got {f.base}")
            if protocol != "text" or f.type != "int":
                self.problem(m["base"][0], f"{key}.base", "only for int fields of text replies")
        if "unit" in m:
            f.unit = self.string(m["unit"][1], f"{key}.unit")
        if "description" in m:
            f.description = self.string(m["description"][1], f"{key}.description")
        for k in ("alarm", "warning"):
            if k in m:
                setattr(f, k, self.attempt(self.pair, m[k][1], f"{key}.{k}"))
        for k in ("scale", "offset"):
            if k in m:
                setattr(f, k, self.number(m[k][1], f"{key}.{k}"))
                if f.type not in ("float", "int"):
                    self.problem(m[k][0], f"{key}.{k}", f"only for numbers (this is {f.type})")
        if "map" in m and "enum" in m:
            self.fail(node, key, "give 'map' or 'enum', not both")
        if "map" in m or "enum" in m:
            if "map" in m:
                table = {}
                for wk, (wknode, wv) in self.items(m["map"][1], f"{key}.map").items():
                    if f.wire is not None:
                        # a binary value is a number: 0x11 and 17 are the same key
                        try:
                            wk = str(int(str(wk), 0))
                        except ValueError:
                            self.problem(wknode, f"{key}.map.{wk}", f"{wk!r} is not an integer (a {f.wire} value)")
                            continue
                    table[str(wk)] = self.string(wv, f"{key}.map.{wk}")
                f.map = table
            else:
                ename = self.string(m["enum"][1], f"{key}.enum")
                if ename not in self.enums:
                    self.fail(m["enum"][1], f"{key}.enum", f"unknown enum {ename!r}"
                              + (f" (defined: {', '.join(self.enums)})" if self.enums else " (no 'enums' section)"))
                f.map = {_wire_key(v): k for k, v in self.enums[ename].items()}
            if explicit_type not in (None, "str"):
                self.problem(m["type"][1], f"{key}.type", "a mapped field is a str (its names)")
            f.type = "str"
        if "flags" in m:
            flags = {}
            flag_nodes = {}
            for fl, (fknode, fv) in self.items(m["flags"][1], f"{key}.flags").items():
                flag_nodes[fl] = fv
                if not _NAME.match(fl):
                    self.problem(fknode, f"{key}.flags.{fl}", f"{fl!r} is not a valid field name")
                    continue
                bit = self.attempt(self.number, fv, f"{key}.flags.{fl}", True, 0)
                if bit is not None:
                    if bit in flags.values():
                        self.problem(fv, f"{key}.flags.{fl}", f"bit {bit} is already named")
                    flags[fl] = bit
            if f.type != "int":
                self.problem(m["flags"][0], f"{key}.flags", f"flags need an int field (this is {f.type})")
            if f.wire:
                bits = 8 * WIRE_TYPES[f.wire][0]
                for fl, bit in flags.items():
                    if bit >= bits:
                        self.problem(flag_nodes[fl], f"{key}.flags.{fl}",
                                     f"bit {bit} is beyond the {f.wire} (bits 0..{bits - 1})")
            f.flags = flags
            if "flag_type" in m:
                f.flag_type = self.choice(m["flag_type"][1], f"{key}.flag_type", ("bool", "int"), "flag type")
        elif "flag_type" in m:
            self.problem(m["flag_type"][0], f"{key}.flag_type", "only with 'flags'")
        if "exponent" in m:
            em = self.mapping(m["exponent"][1], f"{key}.exponent", ("mantissa_digits", "digits", "offset"),
                              required=("mantissa_digits",))
            if "mantissa_digits" not in em:
                raise _Skip
            e = ExponentSpec(self.number(em["mantissa_digits"][1], f"{key}.exponent.mantissa_digits", integer=True,
                                         minimum=1))
            if "digits" in em:
                e.digits = self.number(em["digits"][1], f"{key}.exponent.digits", integer=True, minimum=1)
            if "offset" in em:
                e.offset = self.number(em["offset"][1], f"{key}.exponent.offset", integer=True)
            if protocol != "text" or f.type != "float":
                self.problem(m["exponent"][0], f"{key}.exponent", "only for float fields of text replies")
            for k in ("scale", "offset", "map", "enum", "base"):
                if k in m:
                    self.problem(m[k][0], f"{key}.{k}", "not with 'exponent'")
            f.exponent = e
        if "array" in m:
            f.array = self.array(m["array"][1], f"{key}.array")
        if "status" in m:
            if protocol != "text":
                self.problem(m["status"][0], f"{key}.status", "only for text replies")
            else:
                f.status = self.status(m["status"][1], f"{key}.status")
        if "sim" in m:
            f.sim = self.field_sim(m["sim"][1], f"{key}.sim", f, op)
        return f

    def array(self, node, key):
        m = self.mapping(node, key, ("count", "max", "labels"))
        a = ArraySpec()
        if "count" in m and "max" in m:
            self.fail(node, key, "give 'count' (always that many) or 'max' (the device decides, up to max)")
        if "count" in m:
            a.count = self.number(m["count"][1], f"{key}.count", integer=True, minimum=1)
        elif "max" in m:
            a.max = self.number(m["max"][1], f"{key}.max", integer=True, minimum=1)
        else:
            self.fail(node, key, "needs 'count' or 'max'")
        if "labels" in m:
            labels = [str(self.value(n, f"{key}.labels")) for n in self.seq(m["labels"][1], f"{key}.labels")]
            if len(labels) != a.size:
                self.fail(m["labels"][1], f"{key}.labels", f"has {len(labels)} labels for {a.size} elements")
            a.labels = labels
        return a

    def status(self, node, key):
        m = self.mapping(node, key, ("position", "valid", "invalid_value", "field", "map", "enum"), required=("valid",))
        s = StatusSpec()
        if "position" in m:
            s.position = self.choice(m["position"][1], f"{key}.position", ("before", "after"), "position")
        if "valid" in m:
            v = m["valid"][1]
            s.valid = [str(self.value(n, f"{key}.valid")) for n in v.value] if isinstance(v, yaml.SequenceNode) \
                else [str(self.value(v, f"{key}.valid"))]
        if "invalid_value" in m:
            s.invalid_value = self.value(m["invalid_value"][1], f"{key}.invalid_value")
        if "field" in m:
            s.field = self.name(m["field"][1], f"{key}.field")
        if "map" in m:
            s.map = {str(k): self.string(v, f"{key}.map.{k}") for k, (_, v) in self.items(m["map"][1], f"{key}.map").items()}
        if "enum" in m:
            ename = self.string(m["enum"][1], f"{key}.enum")
            if ename not in self.enums:
                self.fail(m["enum"][1], f"{key}.enum", f"unknown enum {ename!r}")
            s.map = {_wire_key(v): k for k, v in self.enums[ename].items()}
        if s.map:
            for v in s.valid or []:
                if v not in s.map and v not in s.map.values():
                    self.problem(m["valid"][1], f"{key}.valid", f"{v!r} is not a status value or name")
        return s

    def field_sim(self, node, key, f, op):
        m = self.mapping(node, key, ("value", "range", "noise", "state"))
        s = SimSpec()
        if "value" in m:
            s.value = self.plain(m["value"][1], f"{key}.value")
            values = s.value if f.array is not None and isinstance(s.value, list) else [s.value]
            for v in values:
                why = _sim_value_problem(f, v)
                if why:
                    self.problem(m["value"][1], f"{key}.value", why)
                    break
        if "range" in m:
            s.range = self.pair(m["range"][1], f"{key}.range")
        if "noise" in m:
            s.noise = self.number(m["noise"][1], f"{key}.noise", minimum=0)
        if "state" in m:
            s.state = self.string(m["state"][1], f"{key}.state", allow_empty=False)
            names = {a.name for a in op.args}
            self.state_template(m["state"][1], f"{key}.state", s.state, names)
        return s

    def expand_fields(self, fields):
        """The fields a call returns: each value field, its status field, its flags."""
        out = []
        for f in fields:
            out.append(f)
            if f.status is not None and f.status.field:
                numeric = all(re.fullmatch(r"[-+]?\d+", v) for v in f.status.valid or ["0"])
                out.append(FieldSpec(f.status.field, "int" if numeric and not f.status.map else "str",
                                     description=f"status of {f.name}",
                                     array=f.array, source=f.name, line=f.line))
            for flag in (f.flags or {}):
                out.append(FieldSpec(flag, f.flag_type, description=f"bit {f.flags[flag]} of {f.name}",
                                     source=f.name, line=f.line))
        return out

    # -- simulator section ---------------------------------------------
    def sim_section(self, node):
        m = self.mapping(node, "sim", ("state", "unknown"))
        state = {}
        if "state" in m:
            for k, (_, v) in self.items(m["state"][1], "sim.state").items():
                state[k] = self.plain(v, f"sim.state.{k}")
        unknown = self.string(m["unknown"][1], "sim.unknown") if "unknown" in m else None
        if unknown is not None and "{" in unknown:
            for n in self.placeholders(m["unknown"][1], "sim.unknown", unknown):
                if n not in self.param_names:
                    self.fail(m["unknown"][1], "sim.unknown", f"placeholder {{{n}}} is not a param")
        return state, unknown

    # -- polling ---------------------------------------------------------
    def polling(self, node, operations):
        m = self.mapping(node, "polling", ("feed", "block", "rate", "frame_length", "items"), required=("feed", "items"))
        if "feed" not in m or "items" not in m:
            raise _Skip
        p = PollSpec(self.name(m["feed"][1], "polling.feed"), "")
        p.block = self.name(m["block"][1], "polling.block") if "block" in m else p.feed
        if "rate" in m:
            p.rate = self.number(m["rate"][1], "polling.rate")
            if p.rate <= 0:
                self.problem(m["rate"][1], "polling.rate", f"must be > 0 (Hz), got {p.rate}")
        if "frame_length" in m:
            p.frame_length = self.number(m["frame_length"][1], "polling.frame_length", minimum=0)
        seen = {}
        for i, item in enumerate(self.seq(m["items"][1], "polling.items")):
            key = f"polling.items[{i}]"
            pi = self.attempt(self.poll_item, item, key, operations)
            if pi is None:
                continue
            p.items.append(pi)
            op = operations[pi.operation]
            by_name = {f.name: f for f in op.fields}
            for src, template in pi.fields.items():
                f = by_name[src]
                names = _feed_names(template, f)
                lim = pi.limits.get(src, {})
                for n in names:
                    if not _NAME.match(n):
                        self.problem(item, key, f"feed field name {n!r} is not valid (a letter, then letters, digits, _)")
                        continue
                    if n in seen:
                        self.problem(item, key, f"feed field {n!r} is also published by item {seen[n]}")
                        continue
                    seen[n] = i
                    p.feed_fields.append(f.renamed(n, array=None, alarm=lim.get("alarm", f.alarm),
                                                   warning=lim.get("warning", f.warning), source=f.source or None))
        return p

    def poll_item(self, node, key, operations):
        m = self.mapping(node, key, ("query", "args", "fields"), required=("query",))
        if "query" not in m:
            raise _Skip
        name = self.string(m["query"][1], f"{key}.query")
        if name in self.damaged:
            raise _Skip                       # its own problems are reported; what follows from them would mislead
        op = operations.get(name)
        if op is None:
            self.fail(m["query"][1], f"{key}.query", f"unknown operation {name!r}")
        if op.writes:
            self.fail(m["query"][1], f"{key}.query", f"{name!r} changes the device (writes); acq polls reads only")
        if not op.fields:
            self.fail(m["query"][1], f"{key}.query", f"{name!r} has no reply fields to publish")
        args = {}
        if "args" in m:
            raw = {k: self.plain(v, f"{key}.args.{k}") for k, (_, v) in self.items(m["args"][1], f"{key}.args").items()}
            try:
                args = op.check_args(**raw)
            except (TypeError, ValueError) as e:
                self.fail(m["args"][1], f"{key}.args", str(e))
        else:
            try:
                args = op.check_args()
            except (TypeError, ValueError) as e:
                self.fail(node, key, f"{e}: give it under 'args'")
        by_name = {f.name: f for f in op.fields}
        fields, limits = {}, {}
        if "fields" in m:
            v = m["fields"][1]
            if isinstance(v, yaml.SequenceNode):
                for n in v.value:
                    fname = self.string(n, f"{key}.fields")
                    if fname not in by_name:
                        self.fail(n, f"{key}.fields", f"{name!r} has no field {fname!r} (fields: {', '.join(by_name)})")
                    fields[fname] = _default_template(by_name[fname])
            else:
                for fname, (knode, fv) in self.items(v, f"{key}.fields").items():
                    if fname not in by_name:
                        self.fail(knode, f"{key}.fields.{fname}",
                                  f"{name!r} has no field {fname!r} (fields: {', '.join(by_name)})")
                    if isinstance(fv, yaml.MappingNode):
                        fm = self.mapping(fv, f"{key}.fields.{fname}", ("name", "alarm", "warning"))
                        template = self.string(fm["name"][1], f"{key}.fields.{fname}.name") if "name" in fm \
                            else _default_template(by_name[fname])
                        lim = {}
                        for k in ("alarm", "warning"):
                            if k in fm:
                                lim[k] = self.pair(fm[k][1], f"{key}.fields.{fname}.{k}")
                        limits[fname] = lim
                    else:
                        template = self.string(fv, f"{key}.fields.{fname}")
                    self.check_template(fv, f"{key}.fields.{fname}", template, by_name[fname])
                    fields[fname] = template
        else:
            fields = {f.name: _default_template(f) for f in op.fields if f.type in FIELD_TYPES}
        return PollItem(name, args, fields, limits)

    def check_template(self, node, key, template, f):
        names = self.placeholders(node, key, template)
        for n in names:
            if n not in ("n", "label", "i"):
                self.fail(node, key, f"unknown placeholder {{{n}}} (use {{n}} (1, 2, ...), {{i}} (0, 1, ...) or {{label}})")
        if f.array is not None and not names:
            self.fail(node, key, f"{f.name!r} is an array: the name needs {{n}}, {{i}} or {{label}}")
        if f.array is None and names:
            self.fail(node, key, f"{f.name!r} is not an array: no placeholders")
        if "label" in names and (f.array is None or f.array.labels is None):
            self.fail(node, key, f"{f.name!r} has no 'labels' for {{label}}")

    # -- agent -----------------------------------------------------------
    def agent(self, node, operations, polling):
        m = self.mapping(node, "agent", ("agent_class", "tasks", "acq_args", "hide", "modes", "default_mode"))
        a = AgentSpec()
        if "agent_class" in m:
            a.agent_class = self.name(m["agent_class"][1], "agent.agent_class")
        if "hide" in m:
            for n in self.seq(m["hide"][1], "agent.hide"):
                op = self.string(n, "agent.hide")
                if op not in operations and op not in self.damaged:
                    self.problem(n, "agent.hide", f"unknown operation {op!r}")
                a.hide.append(op)
        if "acq_args" in m:
            am = self.mapping(m["acq_args"][1], "agent.acq_args", ("rate", "period"))
            if "rate" in am and "period" in am:
                self.problem(m["acq_args"][1], "agent.acq_args", "give 'rate' (cycles per second) or 'period' "
                                                                  "(seconds between cycles), not both")
            elif "rate" in am:
                a.acq_args["rate"] = self.name(am["rate"][1], "agent.acq_args.rate")
            elif "period" in am:
                a.acq_args = {"period": self.name(am["period"][1], "agent.acq_args.period")}
        if "tasks" in m:
            for tname, (knode, vnode) in self.items(m["tasks"][1], "agent.tasks").items():
                key = f"agent.tasks.{tname}"
                if not _NAME.match(tname):
                    self.problem(knode, key, f"{tname!r} is not a valid name")
                    continue
                if tname in operations and tname not in a.hide:
                    self.problem(knode, key, f"{tname!r} is already the task of the operation of that name "
                                             "(hide the operation to reuse its name)")
                    continue
                if tname in ("acq",):
                    self.problem(knode, key, "'acq' is the polling process")
                    continue
                t = self.attempt(self.task, vnode, key, tname, operations)
                if t is not None:
                    a.tasks[tname] = t
        if "modes" in m:
            for mode, (_knode, vnode) in self.items(m["modes"][1], "agent.modes").items():
                key = f"agent.modes.{mode}"
                start = {}
                if isinstance(vnode, yaml.MappingNode):
                    for opname, (oknode, ov) in self.items(vnode, key).items():
                        if opname != "acq" and opname not in a.tasks and opname not in operations:
                            self.problem(oknode, f"{key}.{opname}", f"unknown task or process {opname!r}")
                            continue
                        params = self.plain(ov, f"{key}.{opname}") if not (
                            isinstance(ov, yaml.ScalarNode) and ov.value in ("", "~", "null")) else {}
                        if not isinstance(params, dict):
                            self.problem(ov, f"{key}.{opname}", "must be a mapping of parameters (or empty)")
                            continue
                        start[opname] = params
                elif not (isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "~", "null")):
                    self.problem(vnode, key, "must map task or process names to their startup parameters")
                a.modes[mode] = start
        if "default_mode" in m:
            a.default_mode = self.string(m["default_mode"][1], "agent.default_mode")
            if a.default_mode not in a.modes:
                self.problem(m["default_mode"][1], "agent.default_mode", f"unknown mode {a.default_mode!r}")
        if polling is None and "acq" in str(a.modes):
            pass
        return a

    def task(self, node, key, name, operations):
        m = self.mapping(node, key, ("kind", "operation", "args", "params", "description"))
        t = TaskSpec(name)
        if "kind" in m:
            t.kind = self.choice(m["kind"][1], f"{key}.kind", ("alias", "init", "stop"), "task kind")
        if "description" in m:
            t.description = self.string(m["description"][1], f"{key}.description")
        if "operation" in m:
            t.operation = self.string(m["operation"][1], f"{key}.operation")
            if t.operation in self.damaged:
                raise _Skip
            if t.operation not in operations:
                self.fail(m["operation"][1], f"{key}.operation", f"unknown operation {t.operation!r}")
        if t.kind == "alias" and t.operation is None:
            self.fail(node, key, "an alias needs 'operation'")
        if t.kind == "stop" and t.operation is not None:
            self.problem(m["operation"][0], f"{key}.operation", "a stop task stops acq; it runs no operation")
        op = operations.get(t.operation)
        if "args" in m:
            if op is None:
                self.fail(m["args"][0], f"{key}.args", "'args' renames the arguments of 'operation'")
            for alias, (_knode, vnode) in self.items(m["args"][1], f"{key}.args").items():
                target = self.string(vnode, f"{key}.args.{alias}")
                if target not in op.arg_map:
                    self.problem(vnode, f"{key}.args.{alias}", f"{t.operation!r} has no argument {target!r}")
                    continue
                t.args[alias] = target
        if op is not None and t.kind == "alias":
            renamed = {v: k for k, v in t.args.items()}
            t.params = [dataclasses.replace(arg, name=renamed.get(arg.name, arg.name)) for arg in op.args]
        if "params" in m:
            for pname, (_knode, vnode) in self.items(m["params"][1], f"{key}.params").items():
                arg = self.attempt(self.arg, vnode, f"{key}.params.{pname}", pname)
                if arg is not None:
                    t.params.append(arg)
        return t


def param_assignments(items):
    """``{name: text}`` from command-line ``NAME=VALUE`` items (``ValueError`` naming a bad one)."""
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not name.strip():
            raise ValueError(f"a param is given as NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def _param_from_text(p, text):
    """A param's value from command-line text, by its type (``ValueError`` naming it when it does not read)."""
    if not isinstance(text, str):
        return text
    try:
        if p.type == "int":
            return int(text, 0)
        if p.type == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"param {p.name!r} must be {'an int' if p.type == 'int' else 'a number'}, "
                         f"got {text!r}") from None
    if p.type == "bool":
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"param {p.name!r} must be true or false, got {text!r}")
    return text


def _state_skeleton(template):
    """A state-name template with each placeholder as one NUL character."""
    return re.sub(r"\{[^{}]*\}", "\0", template)


def _state_regex(template):
    """A regex matching the names a state-name template can make (a placeholder: any text)."""
    parts = re.split(r"\{[^{}]*\}", template)
    return re.compile(".+".join(re.escape(p) for p in parts))


def _sim_value_problem(f, v):
    """Why ``v`` cannot be the simulated value of field ``f`` (None: it can)."""
    if v is None:
        return None
    if f.map is not None:
        if str(v) in f.map or v in f.map.values():
            return None
        return f"{v!r} is not one of the field's names {sorted(set(f.map.values()))} (or wire values {sorted(f.map)})"
    if f.type == "str":
        if isinstance(v, bool):
            return f"{v!r} is not text (YAML reads unquoted on/off/yes/no as a boolean: quote it)"
        return None
    if f.type == "bool":
        return None if isinstance(v, bool) or v in (0, 1) else f"{v!r} is not true or false"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{v!r} is not a number"
    if isinstance(v, float) and not math.isfinite(v):
        return f"{v!r} is not a finite number"
    if f.wire is not None and WIRE_TYPES[f.wire][1] not in "fd":
        size = WIRE_TYPES[f.wire][0]
        lo, hi = ((-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if f.wire.startswith("i")
                  else (0, (1 << (8 * size)) - 1))
        raw = round((v - (f.offset or 0)) / (f.scale or 1))
        if not lo <= raw <= hi:
            scaled = f" (sent as {raw})" if f.scale is not None or f.offset is not None else ""
            return f"{v!r}{scaled} does not fit a {f.wire} ({lo}..{hi})"
    return None


def _wire_key(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _default_template(f):
    if f.array is None:
        return f.name
    return f"{f.name}_{{label}}" if f.array.labels else f"{f.name}_{{n}}"


def _feed_names(template, f):
    if f.array is None:
        return [template]
    labels = f.array.labels or [str(i + 1) for i in range(f.array.size)]
    return [template.format(n=i + 1, i=i, label=labels[i]) for i in range(f.array.size)]


_REGEX_META = set("[]()*+?|{}^$.\\")


def _format_from_regex(pattern):
    """A format string that produces text the regex matches, for simple regexes:
    literals around named groups.  None when the regex is more than that."""
    p = pattern
    if p.startswith("^"):
        p = p[1:]
    if p.endswith("$") and not p.endswith("\\$"):
        p = p[:-1]
    out = []
    i = 0
    while i < len(p):
        if p.startswith("(?P<", i):
            end = p.find(">", i)
            name = p[i + 4:end]
            depth, j = 1, end + 1
            while j < len(p) and depth:
                if p[j] == "\\":
                    j += 2
                    continue
                if p[j] == "(":
                    depth += 1
                elif p[j] == ")":
                    depth -= 1
                j += 1
            if depth:
                return None
            out.append("{" + name + "}")
            i = j
            continue
        ch = p[i]
        if ch == "\\" and i + 1 < len(p):
            nxt = p[i + 1]
            if nxt == "s":
                out.append(" ")
                i += 2
                if i < len(p) and p[i] in "*+?":
                    i += 1
                continue
            if nxt.isalnum():
                return None
            out.append(nxt.replace("{", "{{").replace("}", "}}"))
            i += 2
            continue
        if ch in _REGEX_META:
            if ch in "*?" and out and out[-1] == " ":
                i += 1
                continue
            return None
        out.append(ch.replace("{", "{{").replace("}", "}}"))
        i += 1
    return "".join(out)


def _join(key, name):
    return f"{key}.{name}" if key else name
