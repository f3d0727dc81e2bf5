/* A strict, validating JSON scanner for compiled fast paths; see _jsonscan.h for what it promises and why.

Strings are checked byte by byte against a table (ordinary printable ASCII runs through one comparison per
byte), multi-byte UTF-8 by the ranges of RFC 3629 (no overlong forms, no encoded surrogates, nothing above
U+10FFFF), escapes by RFC 8259 with \u surrogates paired. Numbers follow the RFC's grammar exactly.
*/
#include "_jsonscan.h"

#include <stdint.h>
#include <string.h>

/* 1 for a byte that stands for itself inside a string: printable ASCII other than '"' and '\\'. */
static unsigned char PLAIN[256];
static int plain_ready = 0;

static void init_plain(void) {
    for (int c = 0x20; c < 0x80; c++) PLAIN[c] = (c != '"' && c != '\\');
    plain_ready = 1;
}

static inline int is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static inline void skip_ws(js_t *s) {
    while (s->p < s->end && is_ws(*s->p)) s->p++;
}

static inline int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at p (which has at least 4 bytes); -1 if they are not. */
static inline int hex4(const unsigned char *p) {
    int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0) return -1;
    return (a << 12) | (b << 8) | (c << 4) | d;
}

/* One multi-byte UTF-8 sequence starting at p (a byte >= 0x80); returns its length, or 0 if invalid. */
static inline int utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    Py_ssize_t left = end - p;
    if (c >= 0xC2 && c <= 0xDF) return (left >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (p[2] & 0xC0) != 0x80) return 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no encoded surrogates */
        return (p[1] >= lo && p[1] <= hi) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        return (p[1] >= lo && p[1] <= hi) ? 4 : 0;
    }
    return 0;
}

/* Eight bytes at a time where the first flagged byte can be found with a count of trailing zeros: GCC or
Clang on a little-endian machine; a byte at a time elsewhere. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SWAR 1
#define FIRST_FLAGGED(m) (__builtin_ctzll(m) >> 3)
#else
#define SWAR 0
#define FIRST_FLAGGED(m) 0
#endif

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* The bytes among the 8 at p that need a look: '"', '\\', a control character or a non-ASCII byte, as the
high bit of each such byte (SWAR: a byte of x is zero exactly where x - 1 borrows into its high bit while
x's own high bit is clear). A borrow can flag a byte above a true hit, never below one, so the lowest flag
is exact, and that is the only one used. */
static inline uint64_t special8(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    uint64_t quote = w ^ (ONES * '"'), slash = w ^ (ONES * '\\');
    uint64_t zero_q = (quote - ONES) & ~quote, zero_s = (slash - ONES) & ~slash;
    uint64_t control = (w - ONES * 0x20) & ~w;
    return (zero_q | zero_s | control | w) & HIGHS;
}

/* A string at s->p (which is '"'): validated and skipped; its content is [*start, *start + *len) and
*escaped says whether it holds any escape (bit 1) or any non-ASCII byte (bit 2). */
static int scan_string(js_t *s, const unsigned char **start, Py_ssize_t *len, int *escaped) {
    const unsigned char *p = s->p + 1, *end = s->end;
    int esc = 0;
    *start = p;
    for (;;) {
        if (SWAR && p + 8 <= end) { /* (a little-endian load: the lowest flag is the first byte in memory) */
            uint64_t m = special8(p);
            if (m == 0) {
                p += 8;
                continue;
            }
            p += FIRST_FLAGGED(m);
        } else {
            while (p < end && PLAIN[*p]) p++;
            if (p >= end) return JS_DECLINE;
        }
        unsigned char c = *p;
        if (c == '"') break;
        if (c == '\\') {
            esc = 1;
            if (p + 1 >= end) return JS_DECLINE;
            unsigned char e = p[1];
            if (e == 'u') {
                if (end - p < 6) return JS_DECLINE;
                int u = hex4(p + 2);
                if (u < 0) return JS_DECLINE;
                p += 6;
                if (u >= 0xDC00 && u <= 0xDFFF) return JS_DECLINE; /* a lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {                  /* must be followed by a low one */
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return JS_DECLINE;
                    int lo = hex4(p + 2);
                    if (lo < 0xDC00 || lo > 0xDFFF) return JS_DECLINE;
                    p += 6;
                }
                continue;
            }
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                p += 2;
                continue;
            }
            return JS_DECLINE;
        }
        if (c < 0x20) return JS_DECLINE; /* control characters must be escaped */
        int n = utf8_seq(p, end);
        if (n == 0) return JS_DECLINE;
        esc |= 2;
        p += n;
    }
    *len = p - *start;
    *escaped = esc;
    s->p = p + 1;
    return JS_OK;
}

/* The str of a scanned string's content (escapes decoded); NULL with an error set on failure. */
static PyObject *decode_string(const unsigned char *start, Py_ssize_t len, int escaped) {
    if (escaped == 0) { /* plain ASCII, the common case: no decoder needed */
        PyObject *out = PyUnicode_New(len, 127);
        if (out != NULL) memcpy(PyUnicode_1BYTE_DATA(out), start, (size_t)len);
        return out;
    }
    if (!(escaped & 1)) return PyUnicode_DecodeUTF8((const char *)start, len, NULL);
    /* Escapes never grow: \uXXXX (6 bytes) is at most 3 bytes of UTF-8, a pair (12) is 4. */
    unsigned char small[256];
    unsigned char *buf = len <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)len);
    if (buf == NULL) return PyErr_NoMemory();
    unsigned char *o = buf;
    const unsigned char *p = start, *end = start + len;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        unsigned char e = p[1];
        p += 2;
        switch (e) {
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                uint32_t u = (uint32_t)hex4(p);
                p += 4;
                if (u >= 0xD800 && u <= 0xDBFF) { /* validated: a low surrogate follows */
                    u = 0x10000 + ((u - 0xD800) << 10) + ((uint32_t)hex4(p + 2) - 0xDC00);
                    p += 6;
                }
                if (u < 0x80) {
                    *o++ = (unsigned char)u;
                } else if (u < 0x800) {
                    *o++ = (unsigned char)(0xC0 | (u >> 6));
                    *o++ = (unsigned char)(0x80 | (u & 0x3F));
                } else if (u < 0x10000) {
                    *o++ = (unsigned char)(0xE0 | (u >> 12));
                    *o++ = (unsigned char)(0x80 | ((u >> 6) & 0x3F));
                    *o++ = (unsigned char)(0x80 | (u & 0x3F));
                } else {
                    *o++ = (unsigned char)(0xF0 | (u >> 18));
                    *o++ = (unsigned char)(0x80 | ((u >> 12) & 0x3F));
                    *o++ = (unsigned char)(0x80 | ((u >> 6) & 0x3F));
                    *o++ = (unsigned char)(0x80 | (u & 0x3F));
                }
                break;
            }
            default: *o++ = e; /* '"', '\\', '/' */
        }
    }
    PyObject *out = PyUnicode_DecodeUTF8((const char *)buf, o - buf, NULL);
    if (buf != small) PyMem_Free(buf);
    return out;
}

/* The table of shared values: direct-mapped by a hash of the bytes, a miss replaces the entry, so it holds
at most SHARED_SLOTS str objects of at most JS_SHARED_MAX characters (about 200 KB) whatever the input. */
#define SHARED_SLOTS 2048

typedef struct {
    PyObject *str; /* NULL while empty; the entry's bytes are the str's own (ASCII) data */
} shared_t;

static shared_t SHARED[SHARED_SLOTS];

static inline uint64_t mix_bytes(const unsigned char *p, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

/* The str of a plain-ASCII string's content, from the shared table when it is there. */
static PyObject *shared_string(const unsigned char *start, Py_ssize_t len) {
    if (len > JS_SHARED_MAX) return decode_string(start, len, 0);
    shared_t *e = &SHARED[mix_bytes(start, len) & (SHARED_SLOTS - 1)];
    if (e->str != NULL && PyUnicode_GET_LENGTH(e->str) == len &&
        memcmp(PyUnicode_1BYTE_DATA(e->str), start, (size_t)len) == 0)
        return Py_NewRef(e->str);
    PyObject *value = decode_string(start, len, 0);
    if (value == NULL) return NULL;
    Py_XSETREF(e->str, Py_NewRef(value));
    return value;
}

static int literal(js_t *s, const char *word, Py_ssize_t n) {
    if (s->end - s->p < n || memcmp(s->p, word, (size_t)n) != 0) return JS_DECLINE;
    s->p += n;
    return JS_OK;
}

static inline int at_digit(const js_t *s) { return s->p < s->end && *s->p >= '0' && *s->p <= '9'; }

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(js_t *s) {
    if (s->p < s->end && *s->p == '-') s->p++;
    if (!at_digit(s)) return JS_DECLINE;
    if (*s->p == '0') {
        s->p++;
    } else {
        while (at_digit(s)) s->p++;
    }
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!at_digit(s)) return JS_DECLINE;
        while (at_digit(s)) s->p++;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) s->p++;
        if (!at_digit(s)) return JS_DECLINE;
        while (at_digit(s)) s->p++;
    }
    return JS_OK;
}

static int skip_value(js_t *s);

/* After a member or element: ',' (and then not the closing bracket) or the closing bracket. Returns 1 for
another item, 0 at the close, JS_DECLINE otherwise. */
static inline int next_item(js_t *s, unsigned char close) {
    skip_ws(s);
    if (s->p >= s->end) return JS_DECLINE;
    if (*s->p == ',') {
        s->p++;
        skip_ws(s);
        return (s->p < s->end && *s->p != close) ? 1 : JS_DECLINE;
    }
    if (*s->p == close) {
        s->p++;
        return 0;
    }
    return JS_DECLINE;
}

/* A member's key at s->p; leaves s->p at its value. */
static inline int scan_key(js_t *s, const unsigned char **key, Py_ssize_t *len, int *escaped) {
    if (s->p >= s->end || *s->p != '"') return JS_DECLINE;
    if (scan_string(s, key, len, escaped) != JS_OK) return JS_DECLINE;
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':') return JS_DECLINE;
    s->p++;
    skip_ws(s);
    return s->p < s->end ? JS_OK : JS_DECLINE;
}

/* '{' or '[' at s->p: step in (depth-limited) and say whether the container is empty (1) or not (0). */
static inline int open_container(js_t *s, unsigned char close) {
    if (++s->depth > JS_MAX_DEPTH) return JS_DECLINE;
    s->p++;
    skip_ws(s);
    if (s->p >= s->end) return JS_DECLINE;
    if (*s->p == close) {
        s->p++;
        s->depth--;
        return 1;
    }
    return 0;
}

/* An object ('}') or array (']') at s->p, every member or element validated and skipped. */
static int skip_container(js_t *s, unsigned char close) {
    int r = open_container(s, close);
    if (r != 0) return r == 1 ? JS_OK : r;
    for (;;) {
        const unsigned char *k;
        Py_ssize_t kl;
        int ke;
        if (close == '}' && scan_key(s, &k, &kl, &ke) != JS_OK) return JS_DECLINE;
        if (skip_value(s) != JS_OK) return JS_DECLINE;
        r = next_item(s, close);
        if (r == 0) break;
        if (r < 0) return r;
    }
    s->depth--;
    return JS_OK;
}

/* One value at s->p (whitespace before it already skipped). */
static int skip_value(js_t *s) {
    if (s->p >= s->end) return JS_DECLINE;
    const unsigned char *start;
    Py_ssize_t len;
    int esc;
    switch (*s->p) {
        case '"': return scan_string(s, &start, &len, &esc);
        case '{': return skip_container(s, '}');
        case '[': return skip_container(s, ']');
        case 't': return literal(s, "true", 4);
        case 'f': return literal(s, "false", 5);
        case 'n': return literal(s, "null", 4);
        default: return scan_number(s);
    }
}

static const js_field *find_field(const js_schema *schema, const unsigned char *key, Py_ssize_t len, int *index) {
    for (int i = 0; i < schema->n; i++) {
        const js_field *f = &schema->fields[i];
        if (f->len == len && memcmp(f->name, key, (size_t)len) == 0) {
            *index = i;
            return f;
        }
    }
    return NULL;
}

/* An object at s->p whose fields per ``schema`` go to ``slots``; other members are validated and skipped. */
static int read_object(js_t *s, const js_schema *schema, PyObject **slots) {
    int r = open_container(s, '}');
    if (r != 0) return r == 1 ? JS_OK : r;
    uint32_t seen = 0;
    for (;;) {
        const unsigned char *key, *start;
        Py_ssize_t kl, len;
        int ke, esc, index;
        if (scan_key(s, &key, &kl, &ke) != JS_OK) return JS_DECLINE;
        if (ke) return JS_DECLINE; /* an escaped key might spell a field's name: the general path decides */
        const js_field *f = find_field(schema, key, kl, &index);
        if (f == NULL) {
            if (skip_value(s) != JS_OK) return JS_DECLINE;
        } else {
            if (seen & (1u << index)) return JS_DECLINE; /* a duplicate: which one wins is not ours to say */
            seen |= 1u << index;
            if (*s->p == 'n') {
                if (literal(s, "null", 4) != JS_OK) return JS_DECLINE;
            } else if ((f->kind == JS_STR || f->kind == JS_SHARED) && *s->p == '"') {
                if (scan_string(s, &start, &len, &esc) != JS_OK) return JS_DECLINE;
                PyObject *value = (f->kind == JS_SHARED && esc == 0) ? shared_string(start, len)
                                                                     : decode_string(start, len, esc);
                if (value == NULL) return JS_ERROR;
                slots[f->slot] = value;
            } else if (f->kind == JS_OBJ && *s->p == '{') {
                r = read_object(s, f->sub, slots);
                if (r != JS_OK) return r;
            } else {
                return JS_DECLINE; /* a type the typed decoder would refuse, or a field we refuse */
            }
        }
        r = next_item(s, '}');
        if (r == 0) break;
        if (r < 0) return r;
    }
    s->depth--;
    return JS_OK;
}

int js_read_document(const unsigned char *data, Py_ssize_t len, const js_schema *schema, PyObject **slots) {
    if (!plain_ready) init_plain();
    js_t s = {data, data + len, 0};
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{') return JS_DECLINE;
    int r = read_object(&s, schema, slots);
    if (r != JS_OK) return r;
    skip_ws(&s);
    return s.p == s.end ? JS_OK : JS_DECLINE;
}

/* The member at keys[level] of the value at s->p, and on down the path; the whole value is consumed
either way. JS_OK with *vs..*ve the final value's bytes, JS_ABSENT where a member is missing or a value on
the way is not an object (null included), JS_DECLINE on a duplicate or an escaped key at a level that is
searched (which member wins, or what the key spells, is the full decoder's business). */
static int find_path(js_t *s, const js_path *path, int level, const unsigned char **vs, const unsigned char **ve) {
    if (*s->p != '{') return skip_value(s) == JS_OK ? JS_ABSENT : JS_DECLINE;
    int r = open_container(s, '}');
    if (r != 0) return r == 1 ? JS_ABSENT : r;
    int result = JS_ABSENT, seen = 0;
    for (;;) {
        const unsigned char *key;
        Py_ssize_t kl;
        int ke;
        if (scan_key(s, &key, &kl, &ke) != JS_OK) return JS_DECLINE;
        if (ke) return JS_DECLINE;
        if (kl == path->lens[level] && memcmp(key, path->keys[level], (size_t)kl) == 0) {
            if (seen) return JS_DECLINE;
            seen = 1;
            if (level + 1 == path->n) {
                *vs = s->p;
                if (skip_value(s) != JS_OK) return JS_DECLINE;
                *ve = s->p;
                result = JS_OK;
            } else {
                result = find_path(s, path, level + 1, vs, ve);
                if (result < 0) return result;
            }
        } else if (skip_value(s) != JS_OK) {
            return JS_DECLINE;
        }
        r = next_item(s, '}');
        if (r == 0) break;
        if (r < 0) return r;
    }
    s->depth--;
    return result;
}

int js_find_path(const unsigned char *data, Py_ssize_t len, const js_path *path, const unsigned char **vs,
                 const unsigned char **ve) {
    if (!plain_ready) init_plain();
    js_t s = {data, data + len, 0};
    skip_ws(&s);
    if (s.p >= s.end || path->n < 1) return JS_DECLINE;
    int r = find_path(&s, path, 0, vs, ve);
    if (r < 0) return r;
    skip_ws(&s);
    return s.p == s.end ? r : JS_DECLINE;
}
