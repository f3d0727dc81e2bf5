/* Window state of plain ``count`` threshold rules, in compiled code (see vigil/detectors/counts.py).

A plain count rule (``count`` with ``at_least`` only) updates one group's two-bucket window per matching
event; with tens of windowed rules an event meets several of them, and in Python each update costs about
2 us at a million open keys: a dict probe that misses the cache three or four times (index, entry, key,
value object) around a few dozen bytecodes. This table keeps each group in one 32-byte slot (the key's
str object, its hash, the bucket number and the two 24-bit counts) in open-addressed, linearly probed
arrays split over 256 shards, so an update is one probe run and a few integer operations (about 3x
faster, measured in bench/stateful.py). Shards grow one at a time, so growing never copies the whole
table in one go (as the dict shards of KeyedState).

The semantics are exactly those of the generated Python update of vigil/detectors/fastpath.py (the same
property tests run both): ``update`` handles a new group, an event in its group's current bucket and one in
the next bucket, and returns ``...`` (Ellipsis) for every other case (a gap or a late event), which the
caller hands to ThresholdDetector's general path. Keys are exact ``str`` objects; the table holds a
reference to each. Nothing here is tracked by the garbage collector (no Python containers per key).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#define NSHARDS 256
#define M24 0xFFFFFFu
#define MIN_CAP 8

typedef struct {
    PyObject *key; /* NULL: empty */
    Py_hash_t hash;
    int64_t bucket;
    uint32_t cur, prev;
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t mask; /* capacity - 1 (a power of two), or -1 when not allocated */
    Py_ssize_t used;
} Shard;

typedef struct {
    PyObject_HEAD
    Shard shards[NSHARDS];
    int64_t w;
    double low;
    Py_ssize_t size, limit, limited;
} Table;

static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static inline Shard *shard_of(Table *t, Py_hash_t h) { return &t->shards[(size_t)h & (NSHARDS - 1)]; }

static inline size_t home(Shard *s, Py_hash_t h) { return ((size_t)h >> 8) & (size_t)s->mask; }

/* The slot holding ``key``, or the empty slot where it would go (slot->key == NULL); NULL on error. */
static Slot *probe(Shard *s, PyObject *key, Py_hash_t h) {
    size_t i = home(s, h);
    for (;;) {
        Slot *sl = &s->slots[i];
        if (sl->key == NULL || sl->key == key) return sl;
        if (sl->hash == h) {
            int eq = PyUnicode_Compare(sl->key, key);
            if (eq == 0) return sl;
            if (eq == -1 && PyErr_Occurred()) return NULL;
        }
        i = (i + 1) & (size_t)s->mask;
    }
}

static int resize(Shard *s, Py_ssize_t cap) {
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
    return 0;
}

/* Room for one more key in ``s`` (load factor at most 3/4 after the insert). */
static int reserve(Shard *s) {
    if (s->mask < 0) return resize(s, MIN_CAP);
    if ((s->used + 1) * 4 > (s->mask + 1) * 3) return resize(s, (s->mask + 1) * 2);
    return 0;
}

/* Remove the key of ``sl`` and close the gap (backward-shift deletion: no tombstones). */
static void remove_slot(Shard *s, Slot *sl) {
    size_t mask = (size_t)s->mask;
    size_t i = (size_t)(sl - s->slots);
    PyObject *key = sl->key;
    for (;;) {
        size_t j = i;
        for (;;) {
            j = (j + 1) & mask;
            if (s->slots[j].key == NULL) {
                s->slots[i].key = NULL;
                s->used--;
                Py_DECREF(key);
                return;
            }
            size_t k = home(s, s->slots[j].hash);
            /* the entry at j may move to i if its home is not cyclically in (i, j] */
            if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) break;
        }
        s->slots[i] = s->slots[j];
        i = j;
    }
}

static int key_hash(PyObject *key, Py_hash_t *h) {
    if (!PyUnicode_CheckExact(key)) {
        PyErr_Format(PyExc_TypeError, "window keys are str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    *h = PyObject_Hash(key);
    return *h == -1 ? -1 : 0;
}

/* A finding's value: an int when the previous bucket is empty (as the Python path computes it). */
static PyObject *value(double v, int exact) {
    return exact ? PyLong_FromDouble(v) : PyFloat_FromDouble(v);
}

static PyObject *Table_update(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "update(key, t) takes 2 arguments");
        return NULL;
    }
    PyObject *key = args[0];
    Py_hash_t h;
    if (key_hash(key, &h) < 0) return NULL;
    int64_t ts = PyLong_AsLongLong(args[1]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    int64_t w = t->w, b = floordiv(ts, w);
    double low = t->low;
    Shard *s = shard_of(t, h);
    Slot *sl = s->mask < 0 ? NULL : probe(s, key, h);
    if (sl == NULL && PyErr_Occurred()) return NULL;
    if (sl == NULL || sl->key == NULL) { /* a new group: its first event */
        if (t->size >= t->limit) {
            t->limited++;
            Py_RETURN_NONE;
        }
        if (reserve(s) < 0) return NULL;
        sl = probe(s, key, h); /* (the slots may have moved) */
        if (sl == NULL) return NULL;
        Py_INCREF(key);
        sl->key = key;
        sl->hash = h;
        sl->bucket = b;
        sl->cur = 1;
        sl->prev = 0;
        s->used++;
        t->size++;
        if (0 < low && low <= 1) return PyLong_FromLong(1);
        Py_RETURN_NONE;
    }
    double before;
    int exact;
    if (sl->bucket != b) {
        if (sl->bucket != b - 1) return Py_NewRef(Py_Ellipsis); /* a gap, or a late event */
        uint32_t p = sl->cur; /* the next bucket: the current count becomes the previous one */
        sl->bucket = b;
        sl->cur = 1;
        sl->prev = p;
        if ((double)p + 1 < low) Py_RETURN_NONE;
        exact = p == 0;
        before = exact ? 0.0 : (double)p * (1 - (double)(ts - b * w) / (double)w);
    } else {
        uint32_t c = sl->cur, p = sl->prev;
        if (c < M24) sl->cur = c + 1;
        if ((double)c + (double)p + 1 < low) Py_RETURN_NONE;
        exact = p == 0;
        before = exact ? (double)c : (double)c + (double)p * (1 - (double)(ts - b * w) / (double)w);
    }
    if (before < low && low <= before + 1) return value(before + 1, exact);
    Py_RETURN_NONE;
}

static PyObject *Table_get(Table *t, PyObject *key) {
    Py_hash_t h;
    if (key_hash(key, &h) < 0) return NULL;
    Shard *s = shard_of(t, h);
    if (s->mask < 0) Py_RETURN_NONE;
    Slot *sl = probe(s, key, h);
    if (sl == NULL) return NULL;
    if (sl->key == NULL) Py_RETURN_NONE;
    return Py_BuildValue("(LII)", (long long)sl->bucket, sl->cur, sl->prev);
}

static PyObject *Table_set(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set(key, bucket, cur, prev) takes 4 arguments");
        return NULL;
    }
    PyObject *key = args[0];
    Py_hash_t h;
    if (key_hash(key, &h) < 0) return NULL;
    long long b = PyLong_AsLongLong(args[1]);
    if (b == -1 && PyErr_Occurred()) return NULL;
    unsigned long cur = PyLong_AsUnsignedLong(args[2]);
    if (cur == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    unsigned long prev = PyLong_AsUnsignedLong(args[3]);
    if (prev == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (cur > M24 || prev > M24) {
        PyErr_SetString(PyExc_ValueError, "a count is at most 2**24 - 1");
        return NULL;
    }
    Shard *s = shard_of(t, h);
    Slot *sl = s->mask < 0 ? NULL : probe(s, key, h);
    if (sl == NULL && PyErr_Occurred()) return NULL;
    if (sl == NULL || sl->key == NULL) {
        if (t->size >= t->limit) {
            t->limited++;
            Py_RETURN_FALSE;
        }
        if (reserve(s) < 0) return NULL;
        sl = probe(s, key, h);
        if (sl == NULL) return NULL;
        Py_INCREF(key);
        sl->key = key;
        sl->hash = h;
        s->used++;
        t->size++;
    }
    sl->bucket = b;
    sl->cur = (uint32_t)cur;
    sl->prev = (uint32_t)prev;
    Py_RETURN_TRUE;
}

static PyObject *Table_discard(Table *t, PyObject *key) {
    Py_hash_t h;
    if (key_hash(key, &h) < 0) return NULL;
    Shard *s = shard_of(t, h);
    if (s->mask < 0) Py_RETURN_FALSE;
    Slot *sl = probe(s, key, h);
    if (sl == NULL) return NULL;
    if (sl->key == NULL) Py_RETURN_FALSE;
    remove_slot(s, sl);
    t->size--;
    Py_RETURN_TRUE;
}

static PyObject *Table_shard_items(Table *t, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= NSHARDS) {
        PyErr_SetString(PyExc_IndexError, "shard index out of range");
        return NULL;
    }
    Shard *s = &t->shards[i];
    PyObject *out = PyList_New(0);
    if (out == NULL || s->mask < 0) return out;
    for (Py_ssize_t j = 0; j <= s->mask; j++) {
        Slot *sl = &s->slots[j];
        if (sl->key == NULL) continue;
        PyObject *item = Py_BuildValue("(OLII)", sl->key, (long long)sl->bucket, sl->cur, sl->prev);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

/* Drop the keys of shard ``i`` whose bucket is below ``oldest``: both their buckets are behind the window. */
static PyObject *Table_expire(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expire(shard, oldest) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    long long oldest = PyLong_AsLongLong(args[1]);
    if (oldest == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= NSHARDS) {
        PyErr_SetString(PyExc_IndexError, "shard index out of range");
        return NULL;
    }
    Shard *s = &t->shards[i];
    Py_ssize_t removed = 0;
    if (s->mask >= 0) {
        Py_ssize_t j = 0;
        while (j <= s->mask) {
            Slot *sl = &s->slots[j];
            if (sl->key != NULL && sl->bucket < oldest) {
                remove_slot(s, sl); /* (moves a later entry into j: look at j again) */
                removed++;
            } else {
                j++;
            }
        }
    }
    t->size -= removed;
    return PyLong_FromSsize_t(removed);
}

static void release(Table *t) {
    for (int i = 0; i < NSHARDS; i++) {
        Shard *s = &t->shards[i];
        if (s->mask >= 0) {
            for (Py_ssize_t j = 0; j <= s->mask; j++) Py_XDECREF(s->slots[j].key);
            PyMem_Free(s->slots);
        }
        s->slots = NULL;
        s->mask = -1;
        s->used = 0;
    }
    t->size = 0;
}

static PyObject *Table_clear(Table *t, PyObject *unused) {
    release(t);
    Py_RETURN_NONE;
}

static int Table_init(Table *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"window_ms", "low", "limit", NULL};
    long long w;
    double low;
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Ldn", kwlist, &w, &low, &limit)) return -1;
    if (w <= 0) {
        PyErr_SetString(PyExc_ValueError, "window_ms must be positive");
        return -1;
    }
    release(t);
    t->w = w;
    t->low = low;
    t->limit = limit;
    t->limited = 0;
    return 0;
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t == NULL) return NULL;
    for (int i = 0; i < NSHARDS; i++) t->shards[i].mask = -1;
    return (PyObject *)t;
}

static void Table_dealloc(Table *t) {
    release(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef Table_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Table_update, METH_FASTCALL,
     "update(key, t) -> None | value | ...: count an event at time t (ms) in key's window; the value of a\n"
     "crossing of the bound, None, or ... when the general path must handle it (a gap or a late event)"},
    {"get", (PyCFunction)Table_get, METH_O, "get(key) -> (bucket, cur, prev) | None"},
    {"set", (PyCFunction)(void (*)(void))Table_set, METH_FASTCALL,
     "set(key, bucket, cur, prev) -> bool: store; False (counted in limited) for a new key past the limit"},
    {"discard", (PyCFunction)Table_discard, METH_O, "discard(key) -> bool: remove key if present"},
    {"shard_items", (PyCFunction)Table_shard_items, METH_O,
     "shard_items(i) -> [(key, bucket, cur, prev), ...] of shard i"},
    {"expire", (PyCFunction)(void (*)(void))Table_expire, METH_FASTCALL,
     "expire(i, oldest) -> int: drop shard i's keys whose bucket is below oldest"},
    {"clear", (PyCFunction)Table_clear, METH_NOARGS, "clear(): drop every key"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Table_members[] = {
    {"size", T_PYSSIZET, offsetof(Table, size), READONLY, "keys held"},
    {"limit", T_PYSSIZET, offsetof(Table, limit), 0, "most keys held"},
    {"limited", T_PYSSIZET, offsetof(Table, limited), 0, "new keys refused at the limit"},
    {"window_ms", T_LONGLONG, offsetof(Table, w), READONLY, "window length (ms)"},
    {"low", T_DOUBLE, offsetof(Table, low), READONLY, "the at_least bound"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vigil.detectors._counttable.CountTable",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Two-bucket count windows of one plain count rule, keyed by str (see the module comment).",
    .tp_new = Table_new,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_members = Table_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_counttable", "Compiled window state of plain count rules.", -1, NULL,
};

PyMODINIT_FUNC PyInit__counttable(void) {
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "CountTable", (PyObject *)&TableType) < 0 ||
        PyModule_AddIntConstant(m, "SHARDS", NSHARDS) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
