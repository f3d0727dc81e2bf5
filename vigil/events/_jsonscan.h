/* A strict, validating JSON scanner that reads chosen fields of an object and skips the rest (_jsonscan.c).

It serves compiled fast paths of the normalizers (_activity.c): they must never accept a record that the
general path would reject or read differently, so the scanner is at least as strict as RFC 8259 and msgspec
(it also checks UTF-8 in skipped strings, which msgspec does not) and *declines* anything it does not handle
itself (duplicate or escaped keys where fields are read, a field of an unexpected type, nesting deeper than
JS_MAX_DEPTH). A declined record goes the general way, which decides with its precise error messages.
*/
#ifndef VIGIL_JSONSCAN_H
#define VIGIL_JSONSCAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define JS_MAX_DEPTH 64

/* Results of the scanner's functions. */
#define JS_OK 0
#define JS_DECLINE (-1) /* invalid JSON, or valid but not for the fast path: no Python error is set */
#define JS_ERROR (-2)   /* a Python error is set (out of memory) */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    int depth;
} js_t;

/* What a field of a schema is. JS_SHARED is a JS_STR whose values repeat (an operation, a caller, a
claim): short plain-ASCII values come from a bounded table of str objects made before, so the same value is
the same object, its str hash computed once (dict look-ups downstream are cheaper too). */
enum { JS_STR, JS_OBJ, JS_REFUSE, JS_SHARED };

/* The longest value JS_SHARED hands out from its table (longer ones are decoded each time). */
#define JS_SHARED_MAX 64

typedef struct js_schema js_schema;

typedef struct {
    const char *name;
    Py_ssize_t len;
    int kind;             /* JS_STR, JS_SHARED: a string or null; JS_OBJ: an object or null; JS_REFUSE: decline */
    int slot;             /* JS_STR, JS_SHARED: where the decoded str goes */
    const js_schema *sub; /* JS_OBJ: the fields read inside it */
} js_field;

struct js_schema {
    int n; /* at most 32 */
    const js_field *fields;
};

/* Read a whole document that must be one object (whitespace around it only), filling ``slots`` (new
references; NULL where the field is absent or null) per ``schema``. On JS_DECLINE or JS_ERROR the slots may
hold references already: the caller clears them either way. */
int js_read_document(const unsigned char *data, Py_ssize_t len, const js_schema *schema, PyObject **slots);

/* A path of member names (at most JS_PATH_MAX), for js_find_path. */
#define JS_PATH_MAX 16
#define JS_ABSENT 1 /* js_find_path: a member of the path is missing, or a value on the way is not an object */

typedef struct {
    int n;
    const char *keys[JS_PATH_MAX];
    Py_ssize_t lens[JS_PATH_MAX];
} js_path;

/* Find the value at ``path`` in a document that must be one object: JS_OK with its bytes in *vs ... *ve
(exclusive), JS_ABSENT, or JS_DECLINE (invalid, a duplicate or escaped key where the path is searched). */
int js_find_path(const unsigned char *data, Py_ssize_t len, const js_path *path, const unsigned char **vs,
                 const unsigned char **ve);

#endif
