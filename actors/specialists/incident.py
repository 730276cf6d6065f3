"""Incident entities: the `entities` specialist plus the two types an incident is about, HOST and
ERROR_CODE, found by validated patterns; IP addresses, URLs, e-mails and names come from the base
detector (actors.pii: patterns and spaCy NER).

HOST: fully qualified names whose top-level domain is a real or an internal one (``db-01.prod.example.com``,
``cache-02.internal``, ``redis.default.svc``); a name after ``host=``, ``node/``, ``pod:`` or ``on host``;
Kubernetes pod names (``payments-api-7d9f8b6c5d-x2k4p``: the replica-set hash and the pod suffix use
Kubernetes' vowel-free alphabet, so words never match); and numbered names (``db-01``, ``kafka-broker-2``,
``ip-10-0-1-23``). File names (``app.py``, ``nginx.conf``) and Java packages (``com.acme.Cart``) are not hosts.

ERROR_CODE: vendor codes (``ORA-00942``, ``TNS-12541``, ``SQL0911N``, ``AADSTS50126``), errno names
(``ECONNREFUSED``), HTTP 4xx/5xx in context (``HTTP 503``, ``status=502``, ``503 Service Unavailable``,
an access-log status), exit codes (``exit code 137``), signals (``SIGKILL``, ``signal 11``), SQLSTATE and
MySQL codes, Windows HRESULTs, Kubernetes reasons (``CrashLoopBackOff``, ``OOMKilled``), gRPC status names,
``ERR_*`` constants and ``E1234``-style codes.

On overlap a validated base pattern (URL, e-mail, IP address, IBAN, card) wins, then ERROR_CODE, then
HOST; both beat a phone-number pattern and a spaCy name over the same characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.pii import ENTITY_TYPES, NER_TYPES, EntityDetector, find_pattern_entities, merge_entities
from actors.specialists.entities import EntitiesSpecialist

Entity = dict[str, Any]

IncidentEntityType = Literal[
    "HOST", "ERROR_CODE",
    "PERSON", "ORGANIZATION", "LOCATION", "DATE", "MONEY", "QUANTITY",
    "EMAIL", "PHONE", "URL", "IP_ADDRESS", "CREDIT_CARD", "IBAN",
]  # fmt: skip
INCIDENT_TYPES = ("HOST", "ERROR_CODE")
# Phone numbers and spaCy's names over log text are mostly timestamps and jargon (ECONNREFUSED as an
# organisation, "node" as a place, Kafka or Jenkins as people), so they are off by default: the
# default agent runs on patterns alone and loads no spaCy model. Add PERSON to see who did what.
DEFAULT_TYPES = ("HOST", "IP_ADDRESS", "ERROR_CODE", "URL", "EMAIL")
# Types that give way to HOST and ERROR_CODE on overlap.
_WEAK_TYPES = frozenset({"PHONE", *NER_TYPES})

# --- HOST -------------------------------------------------------------------------------------

# Top-level domains accepted in a host name: the common generic ones, internal suffixes
# (RFC 6762, RFC 2606, Kubernetes, cloud private DNS) and country codes, without those that are
# also file extensions of code or config (py, pl, pm, rs, sh, md, cc, ml, mm, tf, ps, sc, cr, so, bz)
# or everyday field names (id).
_GENERIC_TLDS = "com net org io co ai dev app cloud info biz edu gov mil int eu tech online site xyz"
_INTERNAL_TLDS = "internal local localdomain localhost lan corp home intranet intra priv private svc cluster test example invalid arpa consul"
_COUNTRY_TLDS = (
    "ac ad ae af ag al am ao ar at au az ba bb bd be bg bh bi bj bn bo br bs bt bw by ca cd cf cg ch ci cl cm cn cu cv "
    "cy cz de dj dk dm dz ec ee eg es et fi fj fm fo fr ga gd ge gh gi gl gm gn gr gt gy hk hn hr ht hu ie il im in iq ir "
    "is it je jm jo jp ke kg kh kr kw ky kz la lb lc li lk lr ls lt lu lv ly ma mc me mg mk mn mo mt mu mv mw mx my mz "
    "na ne ng ni nl no np nz om pa pe pg ph pk pr pt pw py qa ro ru rw sa se sg si sk sl sm sn sr sv sy sz th tj tk tn to tr tt "
    "tv tw tz ua ug uk us uy uz va vc ve vn vu ws ye za zm zw"
)
_FILE_LIKE_TLDS = {"py", "pl", "pm", "rs", "sh", "md", "cc", "ml", "mm", "tf", "ps", "sc", "cr", "so", "bz", "id"}
HOST_TLDS = frozenset((_GENERIC_TLDS + " " + _INTERNAL_TLDS + " " + _COUNTRY_TLDS).split()) - _FILE_LIKE_TLDS
# A reversed domain with three or more labels is a Java or Go package, not a host.
_PACKAGE_ROOTS = {"com", "org", "net", "io", "edu", "gov"}

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FQDN = re.compile(rf"(?<![\w@./:-])((?:{_LABEL}\.)+([A-Za-z]{{2,63}}))(?![\w-]|\.[A-Za-z0-9])")
_HOST_KEYS = r"host(?:name)?|server|node|pod|instance|machine|vm|container|replica|broker"
# The key is a word of its own ("total-vm:" is no key), the name starts with a letter ("vm: 8192kB" is no host).
_HOST_AFTER_KEY = re.compile(
    rf"(?<![\w-])(?:{_HOST_KEYS})(?P<sep>\s*[=:]\s*[\"']?|/|\s+)(?P<name>[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?(?:\.{_LABEL})*)", re.IGNORECASE
)
# Kubernetes random suffixes come from this alphabet (k8s.io/apimachinery utilrand).
_K8S = "[bcdfghjklmnpqrstvwxz2456789]"
_POD = re.compile(rf"(?<![\w./-])([a-z0-9]+(?:-[a-z0-9]+)*-{_K8S}{{6,10}}-{_K8S}{{5}})(?![\w-])")
_DAEMON_POD = re.compile(rf"(?<![\w./-])([a-z][a-z0-9]*(?:-[a-z0-9]+)*-(?=[a-z]*\d){_K8S}{{5}})(?![\w-])")
_NUMBERED = re.compile(r"(?<![\w./-])([a-z][a-z0-9]*(?:-[a-z0-9]+)*-\d{1,4}[a-z]?)(?![\w-]|\.\d)")
# Numbered words that are standards, versions or algorithms rather than machines.
_NOT_HOST_PREFIXES = frozenset(
    "utf iso sha md base covid x ipv tls ssl http https rfc cve win windows python py java jdk jre gpt "
    "llama step part phase attempt retry try round v version release rc beta alpha top page item line chapter "
    "ubuntu debian centos rhel el fedora alpine amd64 arm arm64 x86 aes rsa crc ecdsa ed iec ieee".split()
)
_KEY_NAME_STOPWORDS = frozenset("is was not and or the a an to of in on for with has had be are down up".split())


def _tld_ok(name: str, tld: str) -> bool:
    labels = name.split(".")
    if tld.lower() not in HOST_TLDS or not (tld.islower() or tld.isupper()):
        return False
    return not (len(labels) >= 3 and labels[0].lower() in _PACKAGE_ROOTS)


def _host(text: str, start: int, end: int, score: float, rank: int) -> Entity:
    return {"text": text[start:end], "type": "HOST", "start": start, "end": end, "score": score, "_rank": rank}


def _hosts(text: str) -> Iterator[Entity]:
    for match in _FQDN.finditer(text):
        if _tld_ok(match.group(1), match.group(2)):
            yield _host(text, match.start(1), match.end(1), 0.95, 2)
    for match in _HOST_AFTER_KEY.finditer(text):
        name = match.group("name")
        spaced = not match.group("sep").strip()
        if name.lower() in _KEY_NAME_STOPWORDS or not any(char.isalpha() for char in name):
            continue
        # After a bare space the word must look like a machine name, not like prose ("server returned").
        if spaced and not any(char.isdigit() or char in "-." for char in name):
            continue
        if "." in name and not name.replace(".", "").replace("-", "").isalnum():
            continue
        yield _host(text, match.start("name"), match.end("name"), 0.9, 2)
    for pattern, score in ((_POD, 0.9), (_DAEMON_POD, 0.8), (_NUMBERED, 0.75)):
        for match in pattern.finditer(text):
            name = match.group(1)
            if pattern is _NUMBERED and name.split("-")[0] in _NOT_HOST_PREFIXES:
                continue
            yield _host(text, match.start(1), match.end(1), score, 1)


# --- ERROR_CODE -------------------------------------------------------------------------------

_ERRNO_NAMES = (
    "EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG ENOEXEC EBADF ECHILD EAGAIN ENOMEM EACCES EFAULT EBUSY EEXIST EXDEV "
    "ENODEV ENOTDIR EISDIR EINVAL ENFILE EMFILE ENOTTY ETXTBSY EFBIG ENOSPC ESPIPE EROFS EMLINK EPIPE EDOM ERANGE "
    "EDEADLK ENAMETOOLONG ENOLCK ENOSYS ENOTEMPTY ELOOP EWOULDBLOCK ENOMSG EIDRM ENOSTR ENODATA ETIME ENOSR ENOLINK "
    "EPROTO EBADMSG EOVERFLOW EILSEQ EUSERS ENOTSOCK EDESTADDRREQ EMSGSIZE EPROTOTYPE ENOPROTOOPT EPROTONOSUPPORT "
    "EOPNOTSUPP EAFNOSUPPORT EADDRINUSE EADDRNOTAVAIL ENETDOWN ENETUNREACH ENETRESET ECONNABORTED ECONNRESET ENOBUFS "
    "EISCONN ENOTCONN ESHUTDOWN ETIMEDOUT ECONNREFUSED EHOSTDOWN EHOSTUNREACH EALREADY EINPROGRESS ESTALE EDQUOT "
    "ECANCELED EOWNERDEAD ENOTRECOVERABLE ENOTFOUND EAI_AGAIN EAI_NONAME"
)
_SIGNALS = "SIGHUP SIGINT SIGQUIT SIGILL SIGTRAP SIGABRT SIGBUS SIGFPE SIGKILL SIGUSR1 SIGSEGV SIGUSR2 SIGPIPE SIGALRM SIGTERM SIGXCPU SIGXFSZ"
_K8S_REASONS = (
    "CrashLoopBackOff ImagePullBackOff ErrImagePull ErrImageNeverPull OOMKilled CreateContainerConfigError "
    "CreateContainerError RunContainerError InvalidImageName ContainerCannotRun FailedScheduling FailedMount "
    "FailedAttachVolume FailedCreatePodSandBox NodeNotReady DeadlineExceeded"
)
_GRPC_CODES = "DEADLINE_EXCEEDED RESOURCE_EXHAUSTED PERMISSION_DENIED FAILED_PRECONDITION UNAUTHENTICATED UNAVAILABLE UNIMPLEMENTED DATA_LOSS OUT_OF_RANGE"
# Oracle and its tools, IBM DB2/MQ, Azure AD: PREFIX-nnnnn or PREFIXnnnn[severity letter].
_VENDOR_PREFIXES = "ORA|PLS|TNS|SP2|RMAN|IMP|EXP|UDE|UDI|KUP|LRM|NNL|NNC|NZE|PRVF|PRVG|CRS|CLSRSC|ACFS|DGM|ORADB"
_HTTP_METHODS = "GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS"
_REASONS = (
    "Bad Request|Unauthorized|Forbidden|Not Found|Method Not Allowed|Request Timeout|Conflict|Gone|Payload Too Large|"
    "Too Many Requests|Internal Server Error|Not Implemented|Bad Gateway|Service Unavailable|Gateway Time-?out"
)


def _words(names: str) -> str:
    return "|".join(sorted(names.split(), key=len, reverse=True))


# (pattern, score, group): group 0 spans the whole match, 1 only the code in it.
_ERROR_CODES: tuple[tuple[re.Pattern, float, int], ...] = (
    (re.compile(rf"\b(?:{_VENDOR_PREFIXES})-\d{{3,5}}\b"), 0.95, 0),
    (re.compile(r"\bSQL\d{4,5}[NWC]\b|\bAMQ\d{4}[EIWS]?\b|\bAADSTS\d{5,6}\b"), 0.95, 0),
    (re.compile(rf"(?<![\w-])(?:{_words(_ERRNO_NAMES)})(?![\w-])"), 0.95, 0),
    (re.compile(rf"(?<![\w-])(?:{_words(_SIGNALS)})(?![\w-])"), 0.95, 0),
    (re.compile(rf"(?<![\w-])(?:{_words(_K8S_REASONS)})(?![\w-])"), 0.95, 0),
    (re.compile(rf"(?<![\w-])(?:{_words(_GRPC_CODES)})(?![\w-])"), 0.9, 0),
    (re.compile(r"(?<![\w-])ERR_[A-Z0-9_]{3,}(?![\w-])"), 0.95, 0),
    (re.compile(r"\bSQLSTATE\s*(?:\[[0-9A-Z]{5}\]|[=:]?\s*[0-9A-Z]{5}\b)"), 0.95, 0),
    (re.compile(r"\bERROR \d{4} \([0-9A-Z]{5}\)"), 0.95, 0),
    (re.compile(r"\b0x[8C][0-9A-F]{7}\b"), 0.9, 0),
    (re.compile(r"\bsignal (?:[1-9]|[12]\d|3[01])\b"), 0.9, 0),
    (re.compile(r"\b(?:exit(?:ed)?(?: with)? (?:code|status)|exit_?code|exitCode|return code)\s*[=:]?\s*(?:-?[1-9]\d{0,2})\b", re.IGNORECASE), 0.9, 0),
    (re.compile(r"\bHTTP(?:/\d(?:\.\d)?)?\s?(?:error |status )?[45]\d\d\b"), 0.9, 0),
    (re.compile(rf"\"\s*(?:{_HTTP_METHODS})\s+\S+\s+HTTP/[\d.]+\"\s+([45]\d\d)\b"), 0.9, 1),
    (re.compile(r"""\b(?:status|status_?code|statusCode|statuscode|http_status|response_code)["']?\s*[=:]\s*["']?([45]\d\d)\b""", re.IGNORECASE), 0.9, 1),
    (re.compile(r"\bstatus code\s+([45]\d\d)\b", re.IGNORECASE), 0.9, 1),
    (re.compile(rf"\b[45]\d\d\s+(?:{_REASONS})\b", re.IGNORECASE), 0.9, 0),
    (re.compile(r"\b(?:return(?:s|ed|ing)?|respond(?:s|ed)? with|answer(?:s|ed)? with|throw(?:s|ing)?|getting|seeing|serving|spike of|spike in)\s+(?:an?\s+|HTTP\s+)?([45]\d\d)s?\b", re.IGNORECASE), 0.85, 1),
    # E1234, but not the klog header "E0312 10:15:32" whose E is the level and digits the date.
    (re.compile(r"(?<![\w-])E\d{3,5}(?![\w-])(?!\s+\d{2}:\d{2})"), 0.8, 0),
)


def _error_codes(text: str) -> Iterator[Entity]:
    for pattern, score, group in _ERROR_CODES:
        for match in pattern.finditer(text):
            start, end = match.start(group), match.end(group)
            yield {"text": text[start:end], "type": "ERROR_CODE", "start": start, "end": end, "score": score, "_rank": 3}


# --- both -------------------------------------------------------------------------------------


def _overlaps(entity: Entity, kept: list[Entity]) -> bool:
    return any(entity["start"] < other["end"] and other["start"] < entity["end"] for other in kept)


def find_incident_entities(text: str) -> list[Entity]:
    """HOST and ERROR_CODE spans of `text`, sorted by start, overlapping neither each other nor a
    validated base pattern (URL, e-mail, IP address, IBAN, card) anywhere in the text."""
    kept = [entity for entity in find_pattern_entities(text) if entity["type"] not in _WEAK_TYPES]
    candidates = sorted([*_error_codes(text), *_hosts(text)], key=lambda e: (-e["_rank"], e["start"] - e["end"], e["start"]))
    found = []
    for entity in candidates:
        if not _overlaps(entity, kept):
            kept.append(entity)
            found.append({key: value for key, value in entity.items() if key != "_rank"})
    return sorted(found, key=lambda entity: (entity["start"], entity["end"]))


class IncidentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: list[IncidentEntityType] = Field(
        default_factory=lambda: list(DEFAULT_TYPES),
        min_length=1,
        description=f"Entity types to return. Default: {', '.join(DEFAULT_TYPES)}; any type of the entities agent may be added.",
    )
    min_score: float = Field(default=0.0, ge=0.0, le=1.0, description="Drop entities scoring below this.")


class IncidentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    types: list[IncidentEntityType] | None = Field(
        default=None, min_length=1, description="Return only these types; each must be enabled in the params."
    )
    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop entities scoring below this, instead of the params' value."
    )


class IncidentEntitiesSpecialist(EntitiesSpecialist):
    """Result: ``{"entities": [{"text", "type", "start", "end", "score"}]}``, offsets into the input,
    sorted by start, no two overlapping."""

    kind: ClassVar[str] = "incident_entities"
    Params: ClassVar[type[BaseModel]] = IncidentParams
    Options: ClassVar[type[BaseModel]] = IncidentOptions

    def _model_name(self) -> str:
        return f"{super()._model_name()} + incident patterns (HOST, ERROR_CODE)"

    def _load(self) -> None:
        # The base detector takes only its own types; HOST and ERROR_CODE are found here.
        self._detector = EntityDetector([kind for kind in self.params.types if kind in ENTITY_TYPES])
        self._detector.load()

    def _detect(self, texts: list[str], options: list[Any]) -> list[list[dict]]:
        base = self._detector.detect(texts)
        found = []
        for text, entities, item in zip(texts, base, options):
            ours = find_incident_entities(text)
            strong = [entity for entity in entities if entity["type"] not in _WEAK_TYPES]
            weak = [entity for entity in entities if entity["type"] in _WEAK_TYPES]
            found.append(self._keep(merge_entities([*strong, *ours], weak), item))
        return found
