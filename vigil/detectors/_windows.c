/* Window state of plain ``count`` and ``distinct`` threshold rules, in compiled code (see
vigil/detectors/compiled.py for why, and threshold.py for the window semantics).

A windowed rule updates one group's two-bucket window per matching event, and with tens of windowed rules
an event meets several. In Python each update is a dict probe that misses the cache several times (index,
entry, key, value object) around a few dozen bytecodes. Here a group is one 40-byte slot (the key's str
object, two hashes of it and the window) in open-addressed, linearly probed arrays split over 256 shards, which
grow one at a time (growing never copies the whole table in one go), with backward-shift deletion (no
tombstones). Nothing is tracked by the garbage collector: the tables hold str keys and plain memory.

CountTable: the slot holds the bucket number and the current and previous counts (24 bits each).
DistinctTable: the slot points to a block with the bucket, the previous bucket's and the current bucket's
8-byte value hashes (at most ``cap`` per bucket) and how many previous ones are not in the current bucket.
Outside, both speak the packed values of vigil/detectors/state.py (a count's three numbers; a distinct
state's ``<q bucket><I nprev><I only> + prev hashes + cur hashes`` bytes), so snapshots are the same.

``update`` handles a new group, an event in its group's current bucket and one in a later bucket (after a
gap too), exactly as the Python paths do (the same property tests run both), and returns ``...``
(Ellipsis) for what it leaves to the general path in Python: a late event.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define NSHARDS 256
#define M24 0xFFFFFFu
#define MIN_CAP 8

typedef struct {
    int64_t bucket;
    uint32_t nprev, ncur, only, room;
    uint64_t h[]; /* h[0, nprev): previous bucket; h[nprev, nprev + ncur): current bucket */
} Block;

typedef struct {
    PyObject *key; /* NULL: empty */
    Py_hash_t hash;
    uint64_t fp; /* a second hash of the key's text: keys are compared by (hash, fp), see probe() */
    union {
        struct {
            int64_t bucket;
            uint32_t cur, prev;
        } c;
        Block *d;
    } v;
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t mask; /* capacity - 1 (a power of two), or -1 when not allocated */
    Py_ssize_t used;
} Shard;

typedef struct {
    PyObject_HEAD
    Shard shards[NSHARDS];
    int distinct; /* which union member the slots use */
    int64_t w;
    double low;
    Py_ssize_t cap; /* distinct: most hashes kept per bucket */
    Py_ssize_t size, limit, limited;
    Py_ssize_t slots; /* slots allocated over every shard (memory: slots * sizeof(Slot)) */
} Table;

/* -- the hash table ------------------------------------------------------------------------------------- */

/* Floor division and the matching remainder (in [0, b)) for b > 0, as Python's // and %, without the
overflow of ``a - (a // b) * b`` at the ends of the range. */
/* An int argument as int64. CPython 3.11's PyLong_AsLongLong goes through a byte array for any int of more
than one 30-bit digit (every time in milliseconds: ~200 instructions a call), PyLong_AsLong does not. */
static inline int64_t as_i64(PyObject *v) {
#if LONG_MAX == INT64_MAX
    return PyLong_AsLong(v);
#else
    return PyLong_AsLongLong(v);
#endif
}

static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static inline int64_t floormod(int64_t a, int64_t b) {
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

static inline Shard *shard_of(Table *t, Py_hash_t h) { return &t->shards[(size_t)h & (NSHARDS - 1)]; }

static inline size_t home(Shard *s, Py_hash_t h) { return ((size_t)h >> 8) & (size_t)s->mask; }

/* A key as the table compares it: the str, its (keyed, per-process) hash and a second, independent 64-bit
hash of its code units (``fp``, computed only when needed: see probe()). */
typedef struct {
    PyObject *obj;
    Py_hash_t hash;
    uint64_t fp;
    int has_fp;
} Key;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* One 8-byte word into the running fingerprint (the round and constants of XXH64's tail). */
static inline uint64_t fp_round(uint64_t h, uint64_t w) {
    h ^= rotl64(w * 0xC2B2AE3D27D4EB4FULL, 31) * 0x9E3779B185EBCA87ULL;
    return rotl64(h, 27) * 0x9E3779B185EBCA87ULL + 0x85EBCA77C2B2AE63ULL;
}

/* The fingerprint of a str: its code units, eight bytes a round, their width and count, then a final
avalanche. Equal strs have the same canonical form in CPython (kind and code units), so equal keys always
have equal fingerprints. Word at a time, not byte at a time: FNV-1a over the bytes cost about 200 ns for a
120-character resource id (a chain of dependent multiplies per byte); this is about an eighth of that.
Only ever compared inside this process (never stored), so the host's byte order does not matter. */
static uint64_t fingerprint(PyObject *key) {
    int kind = PyUnicode_KIND(key);
    const unsigned char *p = PyUnicode_DATA(key);
    size_t n = (size_t)PyUnicode_GET_LENGTH(key) * (size_t)kind;
    uint64_t h = 0x27D4EB2F165667C5ULL ^ ((uint64_t)n << 8) ^ (uint64_t)kind, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        h = fp_round(h, w);
    }
    if (i < n) { /* the last 1-7 bytes, zero-padded (the length is already in h) */
        w = 0;
        memcpy(&w, p + i, n - i);
        h = fp_round(h, w);
    }
    h ^= h >> 33;
    h *= 0xC2B2AE3D27D4EB4FULL;
    h ^= h >> 29;
    h *= 0x165667B19E3779F9ULL;
    return h ^ (h >> 32);
}

static inline uint64_t key_fp(Key *k) {
    if (!k->has_fp) {
        k->fp = fingerprint(k->obj);
        k->has_fp = 1;
    }
    return k->fp;
}

/* The slot holding ``key``, or the empty slot where it would go (key == NULL).

Two keys are the same when their str hash and their fingerprint both match, 128 bits of two independent
functions: the stored str is never read here. Reading it was a cache miss on every update of a large table
(the str lives wherever the event that opened the group was allocated), and with it an update at a million
open keys cost about 650 ns; without it about 270 ns. Two different keys of one rule's live groups are taken
for one with a chance of about 2**-128 per pair (the str hash is SipHash under a per-process random key, so
input cannot be crafted to collide). The fingerprint of the key looked up is computed only when a slot's
hash matches and its str is another object: the same object (a resource id from the parse cache) is found
without it. */
static Slot *probe(Shard *s, Key *k) {
    size_t i = home(s, k->hash);
    for (;;) {
        Slot *sl = &s->slots[i];
        if (sl->key == NULL || sl->key == k->obj || (sl->hash == k->hash && sl->fp == key_fp(k))) return sl;
        i = (i + 1) & (size_t)s->mask;
    }
}

static int resize(Table *t, Shard *s, Py_ssize_t cap) {
    Slot *fresh = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = s->slots;
    Py_ssize_t oldcap = s->mask + 1;
    s->slots = fresh;
    s->mask = cap - 1;
    for (Py_ssize_t j = 0; j < oldcap; j++) {
        if (old[j].key != NULL) {
            size_t i = home(s, old[j].hash);
            while (fresh[i].key != NULL) i = (i + 1) & (size_t)s->mask;
            fresh[i] = old[j];
        }
    }
    PyMem_Free(old);
    t->slots += cap - oldcap;
    return 0;
}

/* Give back most of a shard's slots once expiry has left it at most 1/8 full: a burst of keys (a scan over
many resources) would otherwise keep its peak memory for the daemon's lifetime. The shard shrinks to the
smallest power of two that keeps it at most 3/8 full (half the load at which it grows again, so a table
holding steady does not resize back and forth), or is freed when empty. Optional: when the smaller array
cannot be allocated the shard stays as it is. */
static void shrink(Table *t, Shard *s) {
    if (s->mask < 0) return;
    Py_ssize_t cap = s->mask + 1;
    if (s->used == 0) {
        PyMem_Free(s->slots);
        s->slots = NULL;
        s->mask = -1;
        t->slots -= cap;
        return;
    }
    if (cap <= MIN_CAP || s->used * 8 > cap) return;
    Py_ssize_t target = cap;
    while (target > MIN_CAP && s->used * 8 <= (target / 2) * 3) target /= 2;
    if (target < cap && resize(t, s, target) < 0) PyErr_Clear();
}

/* The slot of ``key`` (found: *fresh = 0), or a new empty one claimed for it (*fresh = 1; the caller fills
the value), or NULL: an error, or a new key past the limit (no error set; counted in ``limited``). */
static Slot *claim(Table *t, Key *k, int *fresh) {
    Shard *s = shard_of(t, k->hash);
    Slot *sl = NULL;
    if (s->mask >= 0) {
        sl = probe(s, k);
        if (sl->key != NULL) {
            *fresh = 0;
            return sl;
        }
    }
    if (t->size >= t->limit) {
        t->limited++;
        return NULL;
    }
    if (s->mask < 0 || (s->used + 1) * 4 > (s->mask + 1) * 3) { /* load factor at most 3/4 */
        if (resize(t, s, s->mask < 0 ? MIN_CAP : (s->mask + 1) * 2) < 0) return NULL;
        sl = probe(s, k); /* (the slots moved) */
    }
    Py_INCREF(k->obj);
    sl->key = k->obj;
    sl->hash = k->hash;
    sl->fp = key_fp(k);
    memset(&sl->v, 0, sizeof(sl->v));
    s->used++;
    t->size++;
    *fresh = 1;
    return sl;
}

static Slot *find(Table *t, Key *k) {
    Shard *s = shard_of(t, k->hash);
    if (s->mask < 0) return NULL;
    Slot *sl = probe(s, k);
    return sl->key == NULL ? NULL : sl;
}

/* Remove the entry of ``sl`` and close the gap behind it (backward-shift deletion). */
static void remove_slot(Table *t, Shard *s, Slot *sl) {
    size_t mask = (size_t)s->mask;
    size_t i = (size_t)(sl - s->slots);
    PyObject *key = sl->key;
    if (t->distinct) PyMem_Free(sl->v.d);
    for (;;) {
        size_t j = i;
        for (;;) {
            j = (j + 1) & mask;
            if (s->slots[j].key == NULL) {
                s->slots[i].key = NULL;
                s->used--;
                t->size--;
                Py_DECREF(key);
                return;
            }
            size_t k = home(s, s->slots[j].hash);
            /* the entry at j may move back to i unless its home lies cyclically in (i, j] */
            if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) break;
        }
        s->slots[i] = s->slots[j];
        i = j;
    }
}

/* ``key`` as the table compares it (see probe()); -1 with an error set when it is not a str. */
static int key_of(PyObject *key, Key *k) {
    if (!PyUnicode_CheckExact(key)) {
        PyErr_Format(PyExc_TypeError, "window keys are str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    if (PyUnicode_READY(key) < 0) return -1; /* (a str from a legacy C API; a no-op for every other) */
    k->obj = key;
    k->hash = PyObject_Hash(key);
    k->has_fp = 0;
    return k->hash == -1 ? -1 : 0;
}

static inline int64_t bucket_of(Slot *sl, int distinct) { return distinct ? sl->v.d->bucket : sl->v.c.bucket; }

static int shard_index(PyObject *arg, Py_ssize_t *i) {
    *i = PyLong_AsSsize_t(arg);
    if (*i == -1 && PyErr_Occurred()) return -1;
    if (*i < 0 || *i >= NSHARDS) {
        PyErr_SetString(PyExc_IndexError, "shard index out of range");
        return -1;
    }
    return 0;
}

/* -- packed values in and out ----------------------------------------------------------------------------- */

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int k = 0; k < n; k++) p[k] = (unsigned char)(v >> (8 * k));
}

static uint64_t get_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int k = 0; k < n; k++) v |= (uint64_t)p[k] << (8 * k);
    return v;
}

/* A count slot as (bucket, cur, prev); a distinct one as its packed bytes. */
static PyObject *packed(Table *t, Slot *sl) {
    if (!t->distinct) return Py_BuildValue("(LII)", (long long)sl->v.c.bucket, sl->v.c.cur, sl->v.c.prev);
    Block *b = sl->v.d;
    Py_ssize_t n = (Py_ssize_t)b->nprev + b->ncur;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 16 + 8 * n);
    if (out == NULL) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    put_le(p, (uint64_t)b->bucket, 8);
    put_le(p + 8, b->nprev, 4);
    put_le(p + 12, b->only, 4);
    memcpy(p + 16, b->h, (size_t)(8 * n)); /* (hashes are kept as their bytes) */
    return out;
}

static Block *new_block(uint32_t room) {
    Block *b = PyMem_Malloc(sizeof(Block) + sizeof(uint64_t) * room);
    if (b == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    b->room = room;
    return b;
}

/* -- shared methods --------------------------------------------------------------------------------------- */

static PyObject *Table_get(Table *t, PyObject *key) {
    Key k;
    if (key_of(key, &k) < 0) return NULL;
    Slot *sl = find(t, &k);
    if (sl == NULL) Py_RETURN_NONE;
    return packed(t, sl);
}

static PyObject *Table_discard(Table *t, PyObject *key) {
    Key k;
    if (key_of(key, &k) < 0) return NULL;
    Slot *sl = find(t, &k);
    if (sl == NULL) Py_RETURN_FALSE;
    remove_slot(t, shard_of(t, k.hash), sl);
    Py_RETURN_TRUE;
}

typedef struct {
    PyObject *key;   /* a new reference */
    PyObject *value; /* distinct: its packed bytes (a new reference); count: NULL */
    int64_t bucket;
    uint32_t cur, prev;
} Item;

static PyObject *Table_shard_items(Table *t, PyObject *arg) {
    Py_ssize_t i, n = 0;
    if (shard_index(arg, &i) < 0) return NULL;
    Shard *s = &t->shards[i];
    if (s->mask < 0 || s->used == 0) return PyList_New(0);
    /* First copy the shard out, allocating nothing the garbage collector tracks (a collection could run a
    finalizer that changes this very table); only then build the tuples and the list. */
    Item *items = PyMem_Calloc((size_t)s->used, sizeof(Item));
    if (items == NULL) return PyErr_NoMemory();
    PyObject *out = NULL;
    for (Py_ssize_t j = 0; j <= s->mask && n < s->used; j++) {
        Slot *sl = &s->slots[j];
        if (sl->key == NULL) continue;
        Item *it = &items[n++];
        it->key = Py_NewRef(sl->key);
        if (t->distinct) {
            if ((it->value = packed(t, sl)) == NULL) goto done; /* (bytes: not tracked) */
        } else {
            it->bucket = sl->v.c.bucket;
            it->cur = sl->v.c.cur;
            it->prev = sl->v.c.prev;
        }
    }
    out = PyList_New(n);
    for (Py_ssize_t k = 0; out != NULL && k < n; k++) {
        Item *it = &items[k];
        PyObject *value = it->value != NULL ? Py_NewRef(it->value)
                                            : Py_BuildValue("(LII)", (long long)it->bucket, it->cur, it->prev);
        PyObject *pair = value == NULL ? NULL : PyTuple_Pack(2, it->key, value);
        Py_XDECREF(value);
        if (pair == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, pair);
    }
done:
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_DECREF(items[k].key);
        Py_XDECREF(items[k].value);
    }
    PyMem_Free(items);
    return out;
}

/* Drop the keys of shard ``i`` whose bucket is below ``oldest``: both their buckets are behind the window. */
static PyObject *Table_expire(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t i;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expire(shard, oldest) takes 2 arguments");
        return NULL;
    }
    if (shard_index(args[0], &i) < 0) return NULL;
    int64_t oldest = as_i64(args[1]);
    if (oldest == -1 && PyErr_Occurred()) return NULL;
    Shard *s = &t->shards[i];
    Py_ssize_t removed = 0, j = 0;
    while (s->mask >= 0 && j <= s->mask) {
        Slot *sl = &s->slots[j];
        if (sl->key != NULL && bucket_of(sl, t->distinct) < oldest) {
            remove_slot(t, s, sl); /* (may move a later entry into j: look at j again) */
            removed++;
        } else {
            j++;
        }
    }
    shrink(t, s);
    return PyLong_FromSsize_t(removed);
}

static void release(Table *t) {
    for (int i = 0; i < NSHARDS; i++) {
        Shard *s = &t->shards[i];
        if (s->mask >= 0) {
            for (Py_ssize_t j = 0; j <= s->mask; j++) {
                if (s->slots[j].key != NULL && t->distinct) PyMem_Free(s->slots[j].v.d);
                Py_XDECREF(s->slots[j].key);
            }
            PyMem_Free(s->slots);
        }
        s->slots = NULL;
        s->mask = -1;
        s->used = 0;
    }
    t->slots = 0;
    t->size = 0;
}

static PyObject *Table_clear(Table *t, PyObject *unused) {
    release(t);
    Py_RETURN_NONE;
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t == NULL) return NULL;
    for (int i = 0; i < NSHARDS; i++) t->shards[i].mask = -1;
    t->w = t->cap = 1; /* (safe until __init__ runs: no division by zero, no key admitted with limit 0) */
    return (PyObject *)t;
}

static void Table_dealloc(Table *t) {
    release(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int init(Table *t, PyObject *args, PyObject *kwds, int distinct) {
    static char *count_kw[] = {"window_ms", "low", "limit", NULL};
    static char *distinct_kw[] = {"window_ms", "low", "limit", "cap", NULL};
    long long w;
    double low;
    Py_ssize_t limit, cap = 0;
    if (distinct ? !PyArg_ParseTupleAndKeywords(args, kwds, "Ldnn", distinct_kw, &w, &low, &limit, &cap)
                 : !PyArg_ParseTupleAndKeywords(args, kwds, "Ldn", count_kw, &w, &low, &limit))
        return -1;
    if (w <= 0 || (distinct && (cap <= 0 || cap > 1 << 20))) {
        PyErr_SetString(PyExc_ValueError, "window_ms must be positive, and cap in [1, 2**20]");
        return -1;
    }
    release(t);
    t->distinct = distinct;
    t->w = w;
    t->low = low;
    t->cap = cap;
    t->limit = limit;
    t->limited = 0;
    return 0;
}

/* -- CountTable ------------------------------------------------------------------------------------------- */

/* A finding's value: an int when the previous bucket is empty (as the Python path computes it). */
static PyObject *count_value(double v, int exact) { return exact ? PyLong_FromDouble(v) : PyFloat_FromDouble(v); }

static PyObject *Count_update(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "update(key, t) takes 2 arguments");
        return NULL;
    }
    PyObject *key = args[0];
    Key k;
    if (key_of(key, &k) < 0) return NULL;
    int64_t ts = as_i64(args[1]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    int64_t w = t->w, b = floordiv(ts, w);
    double low = t->low, before;
    int fresh, exact;
    Slot *sl = claim(t, &k, &fresh);
    if (sl == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE; /* a new key past the limit (counted) */
    }
    if (fresh) { /* a new group: its first event */
        sl->v.c.bucket = b;
        sl->v.c.cur = 1;
        if (0 < low && low <= 1) return PyLong_FromLong(1);
        Py_RETURN_NONE;
    }
    if (sl->v.c.bucket != b) {
        if (b < sl->v.c.bucket) return Py_NewRef(Py_Ellipsis); /* a late event: the general path */
        /* a later bucket: the current count becomes the previous one when it is the next bucket; after a gap
        nothing of the group is left in the window, and it starts over as a new group (b - 1: b is above
        the bucket, so above INT64_MIN) */
        uint32_t p = sl->v.c.bucket == b - 1 ? sl->v.c.cur : 0;
        sl->v.c.bucket = b;
        sl->v.c.cur = 1;
        sl->v.c.prev = p;
        if ((double)p + 1 < low) Py_RETURN_NONE;
        exact = p == 0;
        before = exact ? 0.0 : (double)p * (1 - (double)floormod(ts, w) / (double)w);
    } else {
        uint32_t c = sl->v.c.cur, p = sl->v.c.prev;
        if (c < M24) sl->v.c.cur = c + 1;
        if ((double)c + (double)p + 1 < low) Py_RETURN_NONE;
        exact = p == 0;
        before = exact ? (double)c : (double)c + (double)p * (1 - (double)floormod(ts, w) / (double)w);
    }
    if (before < low && low <= before + 1) return count_value(before + 1, exact);
    Py_RETURN_NONE;
}

static PyObject *Count_set(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set(key, bucket, cur, prev) takes 4 arguments");
        return NULL;
    }
    Key k;
    if (key_of(args[0], &k) < 0) return NULL;
    int64_t b = as_i64(args[1]);
    if (b == -1 && PyErr_Occurred()) return NULL;
    unsigned long cur = PyLong_AsUnsignedLong(args[2]);
    if (cur == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    unsigned long prev = PyLong_AsUnsignedLong(args[3]);
    if (prev == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (cur > M24 || prev > M24) {
        PyErr_SetString(PyExc_ValueError, "a count is at most 2**24 - 1");
        return NULL;
    }
    int fresh;
    Slot *sl = claim(t, &k, &fresh);
    if (sl == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_FALSE;
    }
    sl->v.c.bucket = b;
    sl->v.c.cur = (uint32_t)cur;
    sl->v.c.prev = (uint32_t)prev;
    Py_RETURN_TRUE;
}

static int Count_init(Table *t, PyObject *args, PyObject *kwds) { return init(t, args, kwds, 0); }

/* -- DistinctTable ---------------------------------------------------------------------------------------- */

static inline int has(const uint64_t *hs, uint32_t n, uint64_t x) {
    for (uint32_t k = 0; k < n; k++)
        if (hs[k] == x) return 1;
    return 0;
}

static PyObject *Distinct_update(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[2]) || PyBytes_GET_SIZE(args[2]) != 8) {
        PyErr_SetString(PyExc_TypeError, "update(key, t, value_hash) takes a str, an int and 8 bytes");
        return NULL;
    }
    PyObject *key = args[0];
    Key k;
    if (key_of(key, &k) < 0) return NULL;
    int64_t ts = as_i64(args[1]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    uint64_t x;
    memcpy(&x, PyBytes_AS_STRING(args[2]), 8);
    int64_t w = t->w, b = floordiv(ts, w);
    double low = t->low;
    uint32_t cap = (uint32_t)t->cap;
    int fresh;
    Slot *sl = claim(t, &k, &fresh);
    if (sl == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (fresh) { /* a new group: its first value (cap is at least 1) */
        Block *blk = new_block(cap < 4 ? cap : 4);
        if (blk == NULL) {
            remove_slot(t, shard_of(t, k.hash), sl); /* (its block pointer is NULL: freeing it is a no-op) */
            return NULL;
        }
        blk->bucket = b;
        blk->nprev = blk->only = 0;
        blk->ncur = 1;
        blk->h[0] = x;
        sl->v.d = blk;
        if (0 < low && low <= 1) return PyLong_FromLong(1); /* (an int, as in Python) */
        Py_RETURN_NONE;
    }
    Block *blk = sl->v.d;
    if (b < blk->bucket) return Py_NewRef(Py_Ellipsis); /* late: the general path (stale, or previous bucket) */
    int roll = b > blk->bucket; /* a later bucket: the current one becomes the previous one (or both go) */
    uint32_t np = roll ? (b == blk->bucket + 1 ? blk->ncur : 0) : blk->nprev, nc = roll ? 0 : blk->ncur;
    if (nc < cap && np + nc + 1 > blk->room) { /* room first, so that a failure changes nothing */
        uint32_t room = blk->room * 2 < np + cap ? blk->room * 2 : np + cap;
        if (room < np + nc + 1) room = np + nc + 1;
        Block *grown = PyMem_Realloc(blk, sizeof(Block) + sizeof(uint64_t) * room);
        if (grown == NULL) return PyErr_NoMemory();
        grown->room = room;
        sl->v.d = blk = grown;
    }
    if (roll) {
        memmove(blk->h, blk->h + blk->nprev, sizeof(uint64_t) * np);
        blk->bucket = b;
        blk->nprev = blk->only = np;
        blk->ncur = 0;
    }
    if (has(blk->h + np, nc, x)) Py_RETURN_NONE; /* already counted in this bucket */
    double frac = 1 - (double)floormod(ts, w) / (double)w;
    double before = (double)nc + (double)blk->only * frac;
    if (nc < cap) {
        if (blk->only && has(blk->h, np, x)) blk->only--; /* seen before: no longer only there */
        blk->h[np + nc] = x;
        blk->ncur = ++nc;
    }
    double after = (double)nc + (double)blk->only * frac;
    if (before < low && low <= after) return PyFloat_FromDouble(after);
    Py_RETURN_NONE;
}

static PyObject *Distinct_set(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "set(key, packed) takes a str and bytes");
        return NULL;
    }
    Key k;
    if (key_of(args[0], &k) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[1]);
    uint64_t nprev = len >= 16 ? get_le(p + 8, 4) : 0, only = len >= 16 ? get_le(p + 12, 4) : 0;
    Py_ssize_t n = (len - 16) / 8;
    if (len < 16 || (len - 16) % 8 || (Py_ssize_t)nprev > n || only > nprev || n - (Py_ssize_t)nprev > t->cap ||
        nprev > (uint64_t)t->cap) {
        PyErr_SetString(PyExc_ValueError, "not a distinct window of this rule");
        return NULL;
    }
    Block *blk = new_block((uint32_t)(n > 0 ? n : 1));
    if (blk == NULL) return NULL;
    blk->bucket = (int64_t)get_le(p, 8);
    blk->nprev = (uint32_t)nprev;
    blk->only = (uint32_t)only;
    blk->ncur = (uint32_t)(n - (Py_ssize_t)nprev);
    memcpy(blk->h, p + 16, (size_t)(8 * n));
    int fresh;
    Slot *sl = claim(t, &k, &fresh);
    if (sl == NULL) {
        PyMem_Free(blk);
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_FALSE;
    }
    if (!fresh) PyMem_Free(sl->v.d);
    sl->v.d = blk;
    Py_RETURN_TRUE;
}

static int Distinct_init(Table *t, PyObject *args, PyObject *kwds) { return init(t, args, kwds, 1); }

/* -- types ------------------------------------------------------------------------------------------------ */

#define SHARED_METHODS                                                                                        \
    {"get", (PyCFunction)Table_get, METH_O, "get(key) -> packed value | None"},                               \
        {"discard", (PyCFunction)Table_discard, METH_O, "discard(key) -> bool: remove key if present"},       \
        {"shard_items", (PyCFunction)Table_shard_items, METH_O, "shard_items(i) -> [(key, packed), ...]"},    \
        {"expire", (PyCFunction)(void (*)(void))Table_expire, METH_FASTCALL,                                  \
         "expire(i, oldest) -> int: drop shard i's keys whose bucket is below oldest"},                       \
        {"clear", (PyCFunction)Table_clear, METH_NOARGS, "clear(): drop every key"},

static PyMethodDef Count_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Count_update, METH_FASTCALL,
     "update(key, t) -> None | value | ...: count an event at t (ms); the value of a crossing of the bound,\n"
     "None, or ... when the general path must handle it (a gap or a late event)"},
    {"set", (PyCFunction)(void (*)(void))Count_set, METH_FASTCALL,
     "set(key, bucket, cur, prev) -> bool: store; False (counted in limited) for a new key past the limit"},
    SHARED_METHODS{NULL, NULL, 0, NULL},
};

static PyMethodDef Distinct_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Distinct_update, METH_FASTCALL,
     "update(key, t, value_hash) -> None | value | ...: count a value at t (ms); the value of a crossing,\n"
     "None, or ... for a late event (the general path)"},
    {"set", (PyCFunction)(void (*)(void))Distinct_set, METH_FASTCALL,
     "set(key, packed) -> bool: store; False (counted in limited) for a new key past the limit"},
    SHARED_METHODS{NULL, NULL, 0, NULL},
};

static PyMemberDef Table_members[] = {
    {"size", T_PYSSIZET, offsetof(Table, size), READONLY, "keys held"},
    {"limit", T_PYSSIZET, offsetof(Table, limit), 0, "most keys held"},
    {"limited", T_PYSSIZET, offsetof(Table, limited), 0, "new keys refused at the limit"},
    {"slots", T_PYSSIZET, offsetof(Table, slots), READONLY, "slots allocated over every shard"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CountType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vigil.detectors._windows.CountTable",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CountTable(window_ms, low, limit): the windows of one plain count rule, keyed by str.",
    .tp_new = Table_new,
    .tp_init = (initproc)Count_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Count_methods,
    .tp_members = Table_members,
};

static PyTypeObject DistinctType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vigil.detectors._windows.DistinctTable",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "DistinctTable(window_ms, low, limit, cap): the windows of one plain distinct rule.",
    .tp_new = Table_new,
    .tp_init = (initproc)Distinct_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Distinct_methods,
    .tp_members = Table_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_windows", "Compiled window state of plain count and distinct rules.", -1, NULL,
};

PyMODINIT_FUNC PyInit__windows(void) {
    if (PyType_Ready(&CountType) < 0 || PyType_Ready(&DistinctType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "CountTable", (PyObject *)&CountType) < 0 ||
        PyModule_AddObjectRef(m, "DistinctTable", (PyObject *)&DistinctType) < 0 ||
        PyModule_AddIntConstant(m, "SHARDS", NSHARDS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
