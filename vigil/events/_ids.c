/* Event ids and event times in compiled code (see vigil/events/fields.py for what they are and why).

Every event gets a time-ordered id: 12 hex digits of its time in milliseconds and 20 of an 80-bit BLAKE2b
of the fields that identify its record. In Python that is a datetime's timestamp, an f-string, a UTF-8
encoding, a hashlib object and two hex conversions: about 2 us of an event's budget of 40 (the replay
benchmark) spent on bookkeeping, with the detector converting the same time to milliseconds once more.
Here it is one call each, with results identical to the Python functions they replace (the tests compare
them on random input, and the BLAKE2b against hashlib).

BLAKE2b is written from RFC 7693 (unkeyed, sequential mode): hashlib has no C API to call per event.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* -- BLAKE2b (RFC 7693) ----------------------------------------------------------------------------------- */

static const uint64_t IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define G(a, b, c, d, x, y)                                                                                  \
    do {                                                                                                     \
        v[a] = v[a] + v[b] + (x);                                                                            \
        v[d] = rotr(v[d] ^ v[a], 32);                                                                        \
        v[c] = v[c] + v[d];                                                                                  \
        v[b] = rotr(v[b] ^ v[c], 24);                                                                        \
        v[a] = v[a] + v[b] + (y);                                                                            \
        v[d] = rotr(v[d] ^ v[a], 16);                                                                        \
        v[c] = v[c] + v[d];                                                                                  \
        v[b] = rotr(v[b] ^ v[c], 63);                                                                        \
    } while (0)

/* One 128-byte block; ``t`` is the number of message bytes hashed so far, this block included. */
static void compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= t; /* (the counter's high word stays 0: inputs here are far below 2**64 bytes) */
    if (last) v[14] = ~v[14];
    /* Unrolled, the message schedule's indices become constants and m[] and v[] live in registers (about
    half the instructions of the rolled loop). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 12
#endif
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r % 10];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The ``size``-byte (1 to 64) unkeyed BLAKE2b of ``data`` into ``out``. */
static void blake2b(const uint8_t *data, size_t n, uint8_t *out, int size) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)size;
    size_t done = 0;
    while (n - done > 128) { /* every full block but the last: that one is compressed as the final block */
        done += 128;
        compress(h, data + done - 128, done, 0);
    }
    memset(block, 0, sizeof block);
    memcpy(block, data + done, n - done);
    compress(h, block, n, 1);
    for (int i = 0; i < size; i++) out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

/* -- helpers ---------------------------------------------------------------------------------------------- */

static const char HEX[] = "0123456789abcdef";
#define MAX_MS ((1LL << 48) - 1)

/* The UTF-8 bytes of ``text`` (lone surrogates passed through, as Python's "surrogatepass"); ``*keep`` is a
bytes object to release afterwards, or NULL when the str's own buffer was used. */
static const char *utf8(PyObject *text, Py_ssize_t *n, PyObject **keep) {
    *keep = NULL;
    const char *s = PyUnicode_AsUTF8AndSize(text, n);
    if (s != NULL) return s;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return NULL;
    PyErr_Clear();
    *keep = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
    if (*keep == NULL) return NULL;
    *n = PyBytes_GET_SIZE(*keep);
    return PyBytes_AS_STRING(*keep);
}

/* Days from 1970-01-01 to a proleptic Gregorian date (exact for every date a datetime can hold). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* -- the module's functions ------------------------------------------------------------------------------- */

static PyObject *ids_digest(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "digest(data: bytes, size: int)");
        return NULL;
    }
    long size = PyLong_AsLong(args[1]);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (size < 1 || size > 64) {
        PyErr_SetString(PyExc_ValueError, "size must be 1 to 64");
        return NULL;
    }
    uint8_t out[64];
    blake2b((const uint8_t *)PyBytes_AS_STRING(args[0]), (size_t)PyBytes_GET_SIZE(args[0]), out, (int)size);
    return PyBytes_FromStringAndSize((const char *)out, size);
}

static PyObject *ids_time_id(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "time_id(prefix: str, key: str, ms: int)");
        return NULL;
    }
    int overflow;
    long long ms = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (ms == -1 && PyErr_Occurred()) return NULL;
    if (overflow || ms < 0 || ms > MAX_MS) ms = (overflow > 0 || ms > MAX_MS) ? MAX_MS : 0;
    Py_ssize_t n;
    PyObject *keep;
    const char *key = utf8(args[1], &n, &keep);
    if (key == NULL) return NULL;
    uint8_t h[10];
    blake2b((const uint8_t *)key, (size_t)n, h, 10);
    Py_XDECREF(keep);
    char tail[32];
    for (int i = 0; i < 12; i++) tail[i] = HEX[(ms >> (4 * (11 - i))) & 15];
    for (int i = 0; i < 10; i++) {
        tail[12 + 2 * i] = HEX[h[i] >> 4];
        tail[13 + 2 * i] = HEX[h[i] & 15];
    }
    PyObject *prefix = args[0];
    if (!PyUnicode_IS_ASCII(prefix)) { /* (never in Vigil's own prefixes; correct all the same) */
        PyObject *suffix = PyUnicode_FromStringAndSize(tail, 32);
        if (suffix == NULL) return NULL;
        PyObject *out = PyUnicode_Concat(prefix, suffix);
        Py_DECREF(suffix);
        return out;
    }
    Py_ssize_t np = PyUnicode_GET_LENGTH(prefix);
    PyObject *out = PyUnicode_New(np + 32, 127);
    if (out == NULL) return NULL;
    Py_UCS1 *dst = PyUnicode_1BYTE_DATA(out);
    memcpy(dst, PyUnicode_1BYTE_DATA(prefix), (size_t)np);
    memcpy(dst + np, tail, 32);
    return out;
}

/* int(moment.timestamp() * 1000), computed the way CPython computes it for an aware UTC datetime (the
exact microseconds since the epoch divided by 10**6, then a double product, truncated), so the results are
the same; anything else (another zone, a naive datetime, a time too far out for a double to hold its
microseconds exactly) calls timestamp() itself. */
static PyObject *ids_to_ms(PyObject *self, PyObject *moment) {
    if (PyDateTime_CheckExact(moment) && PyDateTime_DATE_GET_TZINFO(moment) == PyDateTime_TimeZone_UTC) {
        int64_t days = days_from_civil(PyDateTime_GET_YEAR(moment), PyDateTime_GET_MONTH(moment),
                                       PyDateTime_GET_DAY(moment));
        int64_t secs = days * 86400 + PyDateTime_DATE_GET_HOUR(moment) * 3600 +
                       PyDateTime_DATE_GET_MINUTE(moment) * 60 + PyDateTime_DATE_GET_SECOND(moment);
        int64_t us = secs * 1000000 + PyDateTime_DATE_GET_MICROSECOND(moment);
        if (us > -(1LL << 53) && us < (1LL << 53)) return PyLong_FromDouble((double)us / 1e6 * 1000.0);
    }
    PyObject *ts = PyObject_CallMethod(moment, "timestamp", NULL);
    if (ts == NULL) return NULL;
    double seconds = PyFloat_AsDouble(ts);
    Py_DECREF(ts);
    if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    return PyLong_FromDouble(seconds * 1000.0);
}

static PyMethodDef methods[] = {
    {"digest", (PyCFunction)(void (*)(void))ids_digest, METH_FASTCALL,
     "digest(data, size): the size-byte unkeyed BLAKE2b of data (as hashlib.blake2b(data, digest_size=size))."},
    {"time_id", (PyCFunction)(void (*)(void))ids_time_id, METH_FASTCALL,
     "time_id(prefix, key, ms): prefix + 12 hex digits of ms (clamped to 0 .. 2**48 - 1) + the 80-bit "
     "BLAKE2b of key's UTF-8 in hex."},
    {"to_ms", ids_to_ms, METH_O, "to_ms(moment): int(moment.timestamp() * 1000)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ids", "Event ids and times (see _ids.c).", -1, methods};

PyMODINIT_FUNC PyInit__ids(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    return PyModule_Create(&module);
}
