/* The literal screen of alert redaction in compiled code (see vigil/alerts/redact.py for what it screens).

Every string of every alert goes through redact_text, and nearly all of them (event ids, rule ids, times,
group values) hold no secret. The Python screen lowers the string and runs about 40 substring tests on it:
1.5 to 3.5 us a string, a dozen strings a finding, most of them seen once (event ids), so the memo does not
help; at 10,000 findings a minute that was 6 % of the daemon's interpreter time under ingestion load. Here
it is one pass: the same literals, looked for in the text as it stands (the case-sensitive ones) and in its
ASCII lower case (the others), plus the longest run of base64 characters, which tells whether the
long-blob pattern can match at all.

Only ASCII text is screened here: str.lower() maps a few non-ASCII characters to ASCII letters (the Kelvin
sign to "k"), so for any other string screen() answers None and the Python screen runs. The needles are
given once by configure(), from the tables in redact.py, so there is one list of them.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *text;
    Py_ssize_t size;
    int lower; /* looked for in the lower-cased text */
    unsigned long long bits;
} Needle;

static Needle *needles = NULL;
static Py_ssize_t n_needles = 0;
static Py_ssize_t long_min = 0;         /* the shortest base64 run the long-blob pattern matches */
static unsigned long long long_bit = 0; /* set when such a run occurs */

static void clear(void) {
    for (Py_ssize_t i = 0; i < n_needles; i++) PyMem_Free(needles[i].text);
    PyMem_Free(needles);
    needles = NULL;
    n_needles = 0;
}

/* Appends the (literal, bits) pairs of a tuple to the table; 0 or -1 with an exception set. */
static int add_needles(PyObject *pairs, int lower, Py_ssize_t *at) {
    Py_ssize_t n = PyTuple_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "needles must be (str, int) pairs");
            return -1;
        }
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &size);
        if (text == NULL) return -1;
        unsigned long long bits = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(pair, 1));
        if (bits == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        if (size == 0 || !PyUnicode_IS_ASCII(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_ValueError, "needles must be non-empty ASCII");
            return -1;
        }
        char *copy = PyMem_Malloc((size_t)size);
        if (copy == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(copy, text, (size_t)size);
        needles[*at] = (Needle){copy, size, lower, bits};
        (*at)++;
    }
    return 0;
}

static PyObject *screen_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure(cased, lower, long_min, long_bit)");
        return NULL;
    }
    Py_ssize_t min = PyLong_AsSsize_t(args[2]);
    if (min == -1 && PyErr_Occurred()) return NULL;
    unsigned long long bit = PyLong_AsUnsignedLongLong(args[3]);
    if (bit == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    clear();
    Py_ssize_t total = PyTuple_GET_SIZE(args[0]) + PyTuple_GET_SIZE(args[1]);
    needles = PyMem_Calloc((size_t)(total ? total : 1), sizeof(Needle));
    if (needles == NULL) return PyErr_NoMemory();
    n_needles = total; /* (entries not yet filled are zeroed: clear() may free them all) */
    Py_ssize_t at = 0;
    if (add_needles(args[0], 0, &at) < 0 || add_needles(args[1], 1, &at) < 0) {
        clear();
        return NULL;
    }
    long_min = min;
    long_bit = bit;
    Py_RETURN_NONE;
}

static int contains(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t m) {
    if (m > n) return 0;
    const char first = needle[0];
    const char *end = hay + (n - m);
    for (const char *p = hay; p <= end; p++) {
        p = memchr(p, first, (size_t)(end - p + 1));
        if (p == NULL) return 0;
        if (memcmp(p + 1, needle + 1, (size_t)(m - 1)) == 0) return 1;
    }
    return 0;
}

static inline int b64_char(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

static PyObject *screen_screen(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "screen() takes a str");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text)) Py_RETURN_NONE;
    const char *data = (const char *)PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    char small[512];
    char *low = n <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc((size_t)n);
    if (low == NULL) return PyErr_NoMemory();
    Py_ssize_t run = 0, longest = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)data[i];
        low[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        run = b64_char(c) ? run + 1 : 0;
        if (run > longest) longest = run;
    }
    unsigned long long todo = longest >= long_min ? long_bit : 0;
    for (Py_ssize_t i = 0; i < n_needles; i++) {
        const Needle *k = &needles[i];
        if ((todo & k->bits) != k->bits && contains(k->lower ? low : data, n, k->text, k->size)) todo |= k->bits;
    }
    if (low != small) PyMem_Free(low);
    return PyLong_FromUnsignedLongLong(todo);
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))screen_configure, METH_FASTCALL,
     "configure(cased, lower, long_min, long_bit): the (literal, bits) pairs to look for as they stand and "
     "in lower case, and the bit set by a run of long_min or more base64 characters."},
    {"screen", screen_screen, METH_O,
     "screen(text): the bits of every literal found in text (see configure), or None when text is not "
     "ASCII."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_screen", "The literal screen of alert redaction (see _screen.c).", -1, methods};

PyMODINIT_FUNC PyInit__screen(void) { return PyModule_Create(&module); }
