"""Novelty archive: MinHash (datasketch) signatures of normalised code + MinHashLSH index.

A candidate is a duplicate when its estimated Jaccard similarity to some architecture
already in the archive reaches ``threshold`` (the reference pipeline: 128 permutations,
7-token shingles, novel if Jaccard < 0.90). Unlike the reference, the archive covers
the whole population so far (not only the baseline) and never fails open: any error
in hashing or lookup propagates instead of letting the candidate through.

Why normalise before shingling: an LLM (or the grammar) that renames a variable,
rewords a comment, adds a docstring or reflows a line has not proposed a new
architecture, yet raw-text shingles would call it new. So the token stream drops
comments and docstrings, ignores layout (only statement and block boundaries remain,
as NEWLINE/INDENT/DEDENT tokens), and renames local identifiers canonically, in order
of first appearance (``v0, v1, ...``; attributes of ``self`` as ``a0, a1, ...``).
What defines the network is kept: keywords, numbers, strings, operators, builtins,
imported names, attribute names of other objects (``nn.Conv2d``, ``F.relu``,
``x.view``) and keyword-argument names (``kernel_size=3``).

Why the LSH index is built at a lower ``candidate_threshold`` than ``threshold``:
datasketch's banding at threshold 0.9 with 128 permutations (5 bands x 25 rows) finds
a pair of Jaccard 0.9 with probability only 1-(1-0.9^25)^5 ~ 0.31. At 0.5 (25 x 5) a
pair at 0.9 is missed with probability ~2e-10 (see :meth:`NoveltyArchive.miss_probability`);
the LSH candidates are then compared by their MinHash Jaccard estimates, which decide.
"""
from __future__ import annotations

import builtins
import functools
import io
import keyword
import tokenize

from datasketch import MinHash, MinHashLSH

from cem_nas.delta import code_tokens

_SCHEME = "affine32"  # datasketch's hashing scheme; stored in the state so a resume can check it
_STATE_FORMAT = "cem_nas.novelty/1"
_KEEP_NAMES = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
_SKIP = (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER)


def _python_tokens(code: str) -> list[tokenize.TokenInfo]:
    """Python tokens without comments and blank-line tokens; raises on untokenizable code."""
    return [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in _SKIP]


def _drop_docstrings(toks: list[tokenize.TokenInfo]) -> list[tokenize.TokenInfo]:
    """Remove string literals that are a whole statement (docstrings and bare strings)."""
    out: list[tokenize.TokenInfo] = []
    boundary = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    i = 0
    while i < len(toks):
        t = toks[i]
        at_statement_start = not out or out[-1].type in boundary
        ends_statement = i + 1 == len(toks) or toks[i + 1].type == tokenize.NEWLINE
        if t.type == tokenize.STRING and at_statement_start and ends_statement:
            i += 2  # the string and its NEWLINE
            continue
        out.append(t)
        i += 1
    return out


def _canonical(toks: list[tokenize.TokenInfo]) -> list[str]:
    """Token strings with local identifiers renamed in order of first appearance."""
    names: dict[str, str] = {}
    attrs: dict[str, str] = {}
    imported: set[str] = set()
    out: list[str] = []
    depth = 0              # bracket depth
    in_params = False      # inside a def's parameter list
    in_import = False      # inside an import statement, before any "as"
    prev: list[str] = []   # the original strings of earlier tokens
    for i, t in enumerate(toks):
        s = t.string
        nxt = toks[i + 1].string if i + 1 < len(toks) else ""
        if t.type == tokenize.NEWLINE:
            in_import = False
            out.append("<nl>")
        elif t.type == tokenize.INDENT:
            out.append("<in>")
        elif t.type == tokenize.DEDENT:
            out.append("<de>")
        elif t.type == tokenize.NAME:
            if s in ("import", "from") and (not prev or prev[-1] in ("<nl>", "<in>", "<de>")):
                in_import = True
            if s == "as":
                in_import = False
            if in_import and s not in ("import", "from"):
                imported.add(s)
            if s in _KEEP_NAMES or s in imported:
                out.append(s)
            elif prev[-1:] == ["."]:
                out.append(attrs.setdefault(s, f"a{len(attrs)}") if prev[-2:-1] == ["self"] else s)
            elif nxt == "=" and depth > 0 and not in_params:
                out.append(s)  # keyword argument of a call: part of the API
            else:
                out.append(names.setdefault(s, f"v{len(names)}"))
            if prev[-1:] == ["def"]:
                in_params = nxt == "("
        else:
            if s in "([{":
                depth += 1
            elif s in ")]}":
                depth = max(0, depth - 1)
                if depth == 0:
                    in_params = False
            out.append(s)
        prev.append(out[-1] if t.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) else s)
    return out


def normalised_tokens(code: str) -> list[str]:
    """The token stream that novelty is measured on (see the module docstring).

    Code that Python cannot tokenize falls back to :func:`cem_nas.delta.code_tokens`
    of its lines with ``#`` comments cut, so broken candidates still get a signature.

    >>> a = normalised_tokens("def f(x):\\n    '''Doc.'''\\n    y = x + 1  # add\\n    return nn.ReLU()(y)\\n")
    >>> b = normalised_tokens("def g(inp):\\n    out = inp + 1\\n\\n    return nn.ReLU()(out)\\n")
    >>> a == b, a[:8]
    (True, ['def', 'v0', '(', 'v1', ')', ':', '<nl>', '<in>'])
    """
    try:
        toks = _python_tokens(code)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return code_tokens("\n".join(line.split("#", 1)[0] for line in code.split("\n")))
    return _canonical(_drop_docstrings(toks))


def shingles(code: str, k: int = 7) -> set[bytes]:
    """The set of k-token shingles of :func:`normalised_tokens` (one shingle if shorter than k).

    >>> len(shingles("x = 1", k=2)), len(shingles("x = 1\\ny = 1", k=2))
    (3, 5)
    """
    toks = normalised_tokens(code)
    if len(toks) <= k:
        return {"\x00".join(toks).encode()}
    return {"\x00".join(toks[i : i + k]).encode() for i in range(len(toks) - k + 1)}


def exact_jaccard(a: set, b: set) -> float:
    """J(A, B) = |A n B| / |A u B| (1.0 for two empty sets).

    >>> exact_jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    union = len(a | b)
    return len(a & b) / union if union else 1.0


@functools.lru_cache(maxsize=256)
def _code_signature(code: str, shingle: int, num_perm: int, seed: int) -> MinHash:
    # cached so that check() then add() of the same candidate tokenizes it once
    return minhash(shingles(code, shingle), num_perm, seed)


@functools.lru_cache(maxsize=32)
def _lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's (bands, rows) for a threshold; computing them takes ~0.1 s, so once."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def minhash(items: set[bytes], num_perm: int = 128, seed: int = 1) -> MinHash:
    """datasketch MinHash signature of a set; its Jaccard estimate has variance J(1-J)/num_perm."""
    m = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)
    m.update_batch(sorted(items))
    return m


class NoveltyArchive:
    """Every architecture kept so far, as MinHash signatures, with an LSH index for lookup.

    ``check(code)`` says whether ``code`` is novel: its largest MinHash Jaccard estimate
    against the LSH candidates in the archive is below ``threshold``. ``max_jaccard`` is
    that largest estimate; it is exact (up to MinHash noise) whenever it reaches
    ``candidate_threshold``, and below that it is the largest among the candidates LSH
    returned (0.0 and ``nearest_key=None`` when there were none).

    >>> arch = NoveltyArchive()
    >>> arch.add("base", "def f(x):\\n    return x * 2 + 1\\n")
    >>> arch.check("def f(y):\\n    # renamed\\n    return y * 2 + 1\\n")
    (False, 1.0, 'base')
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 128, shingle: int = 7, seed: int = 1,
                 candidate_threshold: float = 0.5):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not 0.0 < candidate_threshold <= threshold:
            raise ValueError(f"candidate_threshold must be in (0, threshold={threshold}], got {candidate_threshold}")
        if int(num_perm) != num_perm or num_perm < 2:
            raise ValueError(f"num_perm must be an integer >= 2, got {num_perm}")
        if int(shingle) != shingle or shingle < 1:
            raise ValueError(f"shingle must be an integer >= 1, got {shingle}")
        self.threshold = float(threshold)
        self.num_perm = int(num_perm)
        self.shingle = int(shingle)
        self.seed = int(seed)
        self.candidate_threshold = float(candidate_threshold)
        self._lsh = MinHashLSH(num_perm=self.num_perm, params=_lsh_bands(self.candidate_threshold, self.num_perm))
        self._sigs: dict[str, MinHash] = {}

    def signature(self, code: str) -> MinHash:
        """MinHash of the code's normalised shingles (cached and shared: do not update it)."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        return _code_signature(code, self.shingle, self.num_perm, self.seed)

    def check(self, code: str) -> tuple[bool, float, str | None]:
        """(novel, max_jaccard, nearest_key) of ``code`` against the whole archive."""
        sig = self.signature(code)
        order = {k: i for i, k in enumerate(self._sigs)}
        candidates = sorted(self._lsh.query(sig), key=order.__getitem__)  # ties go to the earliest added
        best, nearest = 0.0, None
        for key in candidates:
            j = float(self._sigs[key].jaccard(sig))
            if j > best or nearest is None:
                best, nearest = j, key
        return best < self.threshold, best, nearest

    def add(self, key: str, code: str) -> None:
        """Put ``code`` in the archive under a new, unique string ``key``."""
        if not isinstance(key, str):
            raise TypeError(f"key must be str (it is stored as JSON), got {type(key).__name__}")
        if key in self._sigs:
            raise ValueError(f"key {key!r} is already in the archive; keys must be unique")
        self._insert(key, self.signature(code))

    def _insert(self, key: str, sig: MinHash) -> None:
        self._lsh.insert(key, sig)
        self._sigs[key] = sig

    def __len__(self) -> int:
        return len(self._sigs)

    def __contains__(self, key: object) -> bool:
        return key in self._sigs

    def miss_probability(self, jaccard: float) -> float:
        """P(LSH does not return an archived item of similarity J) = (1 - J^r)^b, b bands of r rows."""
        return float((1.0 - jaccard ** self._lsh.r) ** self._lsh.b)

    def state_dict(self) -> dict:
        """JSON-able state: settings and every key with its signature's hash values."""
        return {
            "format": _STATE_FORMAT,
            "scheme": _SCHEME,
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "shingle": self.shingle,
            "seed": self.seed,
            "candidate_threshold": self.candidate_threshold,
            "keys": list(self._sigs),
            "hashvalues": [sig.hashvalues.tolist() for sig in self._sigs.values()],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> NoveltyArchive:
        """Rebuild an archive saved by :meth:`state_dict` (signatures are not recomputed)."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a novelty archive state (expected format {_STATE_FORMAT!r})")
        if state.get("scheme") != _SCHEME:
            raise ValueError(f"archive hashed with scheme {state.get('scheme')!r}, this version uses {_SCHEME!r}")
        arch = cls(state["threshold"], state["num_perm"], state["shingle"], state["seed"], state["candidate_threshold"])
        keys, values = state["keys"], state["hashvalues"]
        if len(keys) != len(values):
            raise ValueError(f"state has {len(keys)} keys but {len(values)} signatures")
        for key, hv in zip(keys, values):
            if len(hv) != arch.num_perm:
                raise ValueError(f"signature of {key!r} has {len(hv)} values, expected num_perm={arch.num_perm}")
            sig = MinHash(num_perm=arch.num_perm, seed=arch.seed, hashvalues=hv, scheme=_SCHEME)
            arch._insert(key, sig)
        return arch
