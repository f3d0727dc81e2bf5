/* The Activity Log's fast normalisation path, compiled (see vigil/events/normalizers/activity.py).

The Activity Log is the highest-volume source, and its fast path in Python (a typed msgspec decode, then
about twenty attribute reads, or-chains and calls to build the event) was about 40 % of the replay
benchmark's instructions: 53,200 per record. Here one call scans the record's bytes (_jsonscan.c:
validating, reading only the fields the event needs), applies the same rules as
ActivityLogNormalizer.from_json_typed and builds the Event: about 37,600. The helpers that hold Vigil's
conventions (time parsing, resource ids, ids, outcomes, severities) are the Python ones, handed over by
configure(), so there is one definition of each; their tables and caches are read here directly, and the
helper itself runs on a miss.

It returns None whenever the typed path must decide: anything the scanner declines, a record that is not
an Activity record, a helper raising NormalizeError. The tests compare its events with the typed path's on
generated, re-serialised and mutated records: the same event, or None.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <string.h>

#include "_jsonscan.h"

#define S(name) name, (Py_ssize_t)(sizeof(name) - 1)

enum {
    TIME, RID, OP, CATEGORY, RESULT_TYPE, RESULT_SIG, CORRELATION, CALLER_IP, LEVEL, EVENT_CATEGORY,
    PRINCIPAL_ID, PRINCIPAL_TYPE,
    OID_URI, OID, UPN_URI, UPN, UNIQUE_NAME, NAME, NAME_URI, APPID, AZP, TID_URI, TID, IPADDR, MIRID,
    NSLOTS
};

static const js_field EVIDENCE_F[] = {
    {S("principalId"), JS_SHARED, PRINCIPAL_ID, NULL},
    {S("principalType"), JS_SHARED, PRINCIPAL_TYPE, NULL},
};
static const js_schema EVIDENCE = {2, EVIDENCE_F};
static const js_field AUTHZ_F[] = {{S("evidence"), JS_OBJ, 0, &EVIDENCE}};
static const js_schema AUTHZ = {1, AUTHZ_F};
static const js_field CLAIMS_F[] = {
    {S("http://schemas.microsoft.com/identity/claims/objectidentifier"), JS_SHARED, OID_URI, NULL},
    {S("oid"), JS_SHARED, OID, NULL},
    {S("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"), JS_SHARED, UPN_URI, NULL},
    {S("upn"), JS_SHARED, UPN, NULL},
    {S("unique_name"), JS_SHARED, UNIQUE_NAME, NULL},
    {S("name"), JS_SHARED, NAME, NULL},
    {S("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"), JS_SHARED, NAME_URI, NULL},
    {S("appid"), JS_SHARED, APPID, NULL},
    {S("azp"), JS_SHARED, AZP, NULL},
    {S("http://schemas.microsoft.com/identity/claims/tenantid"), JS_SHARED, TID_URI, NULL},
    {S("tid"), JS_SHARED, TID, NULL},
    {S("ipaddr"), JS_SHARED, IPADDR, NULL},
    {S("xms_mirid"), JS_SHARED, MIRID, NULL},
};
static const js_schema CLAIMS = {13, CLAIMS_F};
static const js_field IDENTITY_F[] = {
    {S("claims"), JS_OBJ, 0, &CLAIMS},
    {S("authorization"), JS_OBJ, 0, &AUTHZ},
};
static const js_schema IDENTITY = {2, IDENTITY_F};
static const js_field PROPERTIES_F[] = {{S("eventCategory"), JS_SHARED, EVENT_CATEGORY, NULL}};
static const js_schema PROPERTIES = {1, PROPERTIES_F};
static const js_field RECORD_F[] = {
    {S("records"), JS_REFUSE, 0, NULL}, /* an envelope: the typed decoder splits it */
    {S("time"), JS_STR, TIME, NULL},
    {S("resourceId"), JS_STR, RID, NULL},
    {S("operationName"), JS_SHARED, OP, NULL},
    {S("category"), JS_SHARED, CATEGORY, NULL},
    {S("resultType"), JS_SHARED, RESULT_TYPE, NULL},
    {S("resultSignature"), JS_SHARED, RESULT_SIG, NULL},
    {S("correlationId"), JS_STR, CORRELATION, NULL},
    {S("callerIpAddress"), JS_SHARED, CALLER_IP, NULL},
    {S("level"), JS_SHARED, LEVEL, NULL},
    {S("identity"), JS_OBJ, 0, &IDENTITY},
    {S("properties"), JS_OBJ, 0, &PROPERTIES},
};
static const js_schema RECORD = {12, RECORD_F};

/* What configure() hands over (strong references, kept for the life of the process). */
static struct {
    PyObject *event, *actor, *frozen_map, *no_actor, *categories, *normalize_error;
    PyObject *parse_time, *parse_resource_id, *time_id, *to_ms, *outcome, *severity, *strip_port;
    PyObject *fromisoformat, *resource_cache, *outcomes, *severities, *lowered;
    Py_ssize_t raw_data_offset, raw_json_offset; /* FrozenMap's two slots */
    PyObject *kind, *prefix, *time_field, *sep, *none_text, *id_attr, *lower;
    PyObject *managed, *user, *service_principal;
    PyObject *actor_kw, *event_kw;
} C;
static int configured = 0;

static inline int truthy(PyObject *s) { return s != NULL && PyUnicode_GET_LENGTH(s) > 0; }

/* Python's ``a or b or ... or z`` over optional strs: the first non-empty one, else the last operand. */
static PyObject *or_chain(PyObject **slots, const int *order, int n) {
    for (int i = 0; i < n - 1; i++)
        if (truthy(slots[order[i]])) return slots[order[i]];
    return slots[order[n - 1]];
}

static inline PyObject *or_none(PyObject *v) { return v != NULL ? v : Py_None; }

/* value.lower(), without a call for ASCII text. */
static PyObject *lower_text(PyObject *value) {
    if (!PyUnicode_IS_ASCII(value)) return PyObject_CallMethodNoArgs(value, C.lower);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    const Py_UCS1 *src = PyUnicode_1BYTE_DATA(value);
    Py_ssize_t i = 0;
    while (i < n && !(src[i] >= 'A' && src[i] <= 'Z')) i++;
    if (i == n) return Py_NewRef(value);
    PyObject *out = PyUnicode_New(n, 127);
    if (out == NULL) return NULL;
    Py_UCS1 *dst = PyUnicode_1BYTE_DATA(out);
    memcpy(dst, src, (size_t)i);
    for (; i < n; i++) dst[i] = (src[i] >= 'A' && src[i] <= 'Z') ? (Py_UCS1)(src[i] + 32) : src[i];
    return out;
}

/* lower_text(value), remembered for short values (operations, principal types, categories: the scanner
hands out one str object per repeated value, so the look-up is by a cached hash and identity). */
#define LOWERED_MAX 4096
static PyObject *lower(PyObject *value) {
    if (PyUnicode_GET_LENGTH(value) > JS_SHARED_MAX) return lower_text(value);
    PyObject *hit = PyDict_GetItemWithError(C.lowered, value);
    if (hit != NULL) return Py_NewRef(hit);
    if (PyErr_Occurred()) return NULL;
    PyObject *low = lower_text(value);
    if (low == NULL) return NULL;
    if (PyDict_GET_SIZE(C.lowered) >= LOWERED_MAX) PyDict_Clear(C.lowered); /* bounded, whatever the input */
    if (PyDict_SetItem(C.lowered, value, low) < 0) {
        Py_DECREF(low);
        return NULL;
    }
    return low;
}

static PyObject *call1(PyObject *fn, PyObject *arg) { return PyObject_Vectorcall(fn, &arg, 1, NULL); }

/* ``category.lower() in ACTIVITY_CATEGORIES or properties.eventCategory is not None``: 1, 0 or -1. */
static int is_activity(PyObject **slots) {
    if (slots[CATEGORY] != NULL) {
        PyObject *low = lower(slots[CATEGORY]);
        if (low == NULL) return -1;
        int hit = PySet_Contains(C.categories, low);
        Py_DECREF(low);
        if (hit != 0) return hit;
    }
    return slots[EVENT_CATEGORY] != NULL;
}

static const int OID_ORDER[] = {OID_URI, OID, PRINCIPAL_ID};
static const int NAME_ORDER[] = {UPN_URI, UPN, UNIQUE_NAME, NAME, NAME_URI};
static const int APP_ORDER[] = {APPID, AZP};
static const int TENANT_ORDER[] = {TID_URI, TID};

/* from_json's actor: claims first, then the authorization evidence and the caller address. */
static PyObject *make_actor(PyObject **slots) {
    PyObject *ip = NULL; /* new reference or NULL for None */
    if (truthy(slots[CALLER_IP])) {
        PyObject *caller = slots[CALLER_IP];
        if (PyUnicode_FindChar(caller, ':', 0, PyUnicode_GET_LENGTH(caller), 1) >= 0) {
            ip = call1(C.strip_port, caller);
            if (ip == NULL) return NULL;
            if (ip == Py_None) Py_CLEAR(ip);
        } else {
            ip = Py_NewRef(caller);
        }
    }
    if (!truthy(ip)) {
        Py_XDECREF(ip);
        ip = Py_XNewRef(slots[IPADDR]);
    }
    PyObject *oid = or_chain(slots, OID_ORDER, 3), *name = or_chain(slots, NAME_ORDER, 5);
    PyObject *app = or_chain(slots, APP_ORDER, 2), *tenant = or_chain(slots, TENANT_ORDER, 2);
    PyObject *atype;
    if (truthy(slots[PRINCIPAL_TYPE])) {
        atype = lower(slots[PRINCIPAL_TYPE]);
        if (atype == NULL) {
            Py_XDECREF(ip);
            return NULL;
        }
    } else if (truthy(slots[MIRID])) {
        atype = Py_NewRef(C.managed);
    } else if (truthy(name)) {
        atype = Py_NewRef(C.user);
    } else if (truthy(app)) {
        atype = Py_NewRef(C.service_principal);
    } else {
        atype = NULL;
    }
    if (!(truthy(oid) || truthy(name) || truthy(app) || truthy(tenant) || truthy(ip) || truthy(atype))) {
        Py_XDECREF(ip);
        Py_XDECREF(atype);
        return Py_NewRef(C.no_actor);
    }
    PyObject *args[6] = {or_none(oid), or_none(name), or_none(atype), or_none(ip), or_none(app), or_none(tenant)};
    PyObject *actor = PyObject_Vectorcall(C.actor, args, 0, C.actor_kw);
    Py_XDECREF(ip);
    Py_XDECREF(atype);
    return actor;
}

/* parse_time(text, "time"): datetime.fromisoformat when it gives UTC (the usual "...Z"); the Python
helper otherwise, which also says why a bad timestamp is bad. */
static PyObject *event_time(PyObject *text) {
    PyObject *dt = call1(C.fromisoformat, text);
    if (dt != NULL && PyDateTime_Check(dt) && PyDateTime_DATE_GET_TZINFO(dt) == PyDateTime_TimeZone_UTC) return dt;
    Py_XDECREF(dt);
    PyErr_Clear();
    PyObject *args[2] = {text, C.time_field};
    return PyObject_Vectorcall(C.parse_time, args, 2, NULL);
}

/* ``table[key]`` when present (the helpers' own look-up tables and cache), else ``fn(key)``. */
static PyObject *lookup_or_call(PyObject *table, PyObject *key, PyObject *fn) {
    PyObject *hit = PyDict_GetItemWithError(table, key);
    if (hit != NULL) return Py_NewRef(hit);
    if (PyErr_Occurred()) return NULL;
    return call1(fn, key);
}

/* FrozenMap(None, data) without running its __init__ in the interpreter: the two slots set directly. */
static PyObject *frozen_json(PyObject *data) {
    PyTypeObject *type = (PyTypeObject *)C.frozen_map;
    PyObject *map = type->tp_alloc(type, 0);
    if (map == NULL) return NULL;
    *(PyObject **)((char *)map + C.raw_data_offset) = Py_NewRef(Py_None);
    *(PyObject **)((char *)map + C.raw_json_offset) = Py_NewRef(data);
    return map;
}

/* _event(): the event from the record's fields; NULL with an error set (NormalizeError included). */
static PyObject *make_event(PyObject **slots, PyObject *actor, PyObject *data) {
    PyObject *when = NULL, *resource = NULL, *rid = NULL, *action = NULL, *key = NULL, *ms = NULL;
    PyObject *id = NULL, *outcome = NULL, *severity = NULL, *raw = NULL, *event = NULL;
    if ((when = event_time(slots[TIME])) == NULL) goto done;
    if ((resource = lookup_or_call(C.resource_cache, slots[RID], C.parse_resource_id)) == NULL) goto done;
    if ((rid = PyObject_GetAttr(resource, C.id_attr)) == NULL) goto done;
    if ((action = lower(slots[OP])) == NULL) goto done;
    PyObject *parts[6] = {slots[CORRELATION], action, slots[RESULT_TYPE], slots[RESULT_SIG], slots[TIME], rid};
    PyObject *texts = PyTuple_New(6);
    if (texts == NULL) goto done;
    for (int i = 0; i < 6; i++) { /* an f-string writes a missing field as "None" */
        PyObject *t = (parts[i] == NULL || parts[i] == Py_None) ? C.none_text : parts[i];
        PyTuple_SET_ITEM(texts, i, Py_NewRef(t));
    }
    key = PyUnicode_Join(C.sep, texts);
    Py_DECREF(texts);
    if (key == NULL) goto done;
    if ((ms = call1(C.to_ms, when)) == NULL) goto done;
    PyObject *iargs[3] = {C.prefix, key, ms};
    if ((id = PyObject_Vectorcall(C.time_id, iargs, 3, NULL)) == NULL) goto done;
    outcome = slots[RESULT_TYPE] != NULL ? lookup_or_call(C.outcomes, slots[RESULT_TYPE], C.outcome)
                                         : call1(C.outcome, Py_None);
    if (outcome == NULL) goto done;
    severity = slots[LEVEL] != NULL ? lookup_or_call(C.severities, slots[LEVEL], C.severity) : Py_NewRef(Py_None);
    if (severity == NULL) goto done;
    if ((raw = frozen_json(data)) == NULL) goto done;
    PyObject *eargs[9] = {id, when, C.kind, action, outcome, severity, actor, resource, raw};
    event = PyObject_Vectorcall(C.event, eargs, 0, C.event_kw);
done:
    Py_XDECREF(when);
    Py_XDECREF(resource);
    Py_XDECREF(rid);
    Py_XDECREF(action);
    Py_XDECREF(key);
    Py_XDECREF(ms);
    Py_XDECREF(id);
    Py_XDECREF(outcome);
    Py_XDECREF(severity);
    Py_XDECREF(raw);
    return event;
}

static PyObject *activity_normalize(PyObject *self, PyObject *data) {
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_activity.configure() was not called");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *slots[NSLOTS] = {NULL};
    int r = js_read_document(view.buf, view.len, &RECORD, slots);
    PyBuffer_Release(&view);
    PyObject *out = NULL, *actor = NULL;
    if (r == JS_ERROR) goto done;
    if (r == JS_DECLINE || slots[RID] == NULL || slots[OP] == NULL || slots[TIME] == NULL) goto decline;
    int ok = is_activity(slots);
    if (ok < 0) goto done;
    if (ok == 0) goto decline;
    if ((actor = make_actor(slots)) == NULL) goto done;
    out = make_event(slots, actor, data);
    if (out == NULL && PyErr_ExceptionMatches(C.normalize_error)) {
        PyErr_Clear();
        goto decline;
    }
    goto done;
decline:
    out = Py_NewRef(Py_None);
done:
    Py_XDECREF(actor);
    for (int i = 0; i < NSLOTS; i++) Py_XDECREF(slots[i]);
    return out;
}

static PyObject *kwnames(const char **names, int n) {
    PyObject *t = PyTuple_New(n);
    if (t == NULL) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_InternFromString(names[i]);
        if (s == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static PyObject *activity_configure(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"event", "actor", "frozen_map", "no_actor", "categories", "normalize_error",
                            "parse_time", "parse_resource_id", "time_id", "to_ms", "outcome", "severity",
                            "strip_port", "resource_cache", "outcomes", "severities", NULL};
    PyObject *o[16];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "$OOOOOOOOOOOOOO!O!O!:configure", names, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12],
                                     &PyDict_Type, &o[13], &PyDict_Type, &o[14], &PyDict_Type, &o[15]))
        return NULL;
    if (!PyAnySet_Check(o[4])) return PyErr_Format(PyExc_TypeError, "categories must be a set");
    if (configured) Py_RETURN_NONE; /* once per process: the objects are module-level constants */
    Py_ssize_t offsets[2];
    const char *slot_names[2] = {"_data", "_json"};
    for (int i = 0; i < 2; i++) { /* FrozenMap's slots, written directly by frozen_json() */
        PyObject *d = PyType_Check(o[2]) ? PyObject_GetAttrString(o[2], slot_names[i]) : NULL;
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            Py_XDECREF(d);
            PyErr_Clear();
            return PyErr_Format(PyExc_TypeError, "frozen_map must be a class with the slot %s", slot_names[i]);
        }
        offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
    }
    C.raw_data_offset = offsets[0];
    C.raw_json_offset = offsets[1];
    PyObject **dst[16] = {&C.event, &C.actor, &C.frozen_map, &C.no_actor, &C.categories, &C.normalize_error,
                          &C.parse_time, &C.parse_resource_id, &C.time_id, &C.to_ms, &C.outcome, &C.severity,
                          &C.strip_port, &C.resource_cache, &C.outcomes, &C.severities};
    for (int i = 0; i < 16; i++) *dst[i] = Py_NewRef(o[i]);
    C.fromisoformat = PyObject_GetAttrString((PyObject *)PyDateTimeAPI->DateTimeType, "fromisoformat");
    if (C.fromisoformat == NULL || (C.lowered = PyDict_New()) == NULL) return NULL;
    static const char *actor_kw[] = {"id", "name", "type", "ip", "app_id", "tenant"};
    static const char *event_kw[] = {"id", "time", "kind", "action", "outcome", "severity", "actor",
                                     "resource", "raw"};
    if (!(C.kind = PyUnicode_InternFromString("azure.activity")) || !(C.prefix = PyUnicode_InternFromString("act:")) ||
        !(C.time_field = PyUnicode_InternFromString("time")) || !(C.sep = PyUnicode_FromString("\x1f")) ||
        !(C.none_text = PyUnicode_InternFromString("None")) || !(C.id_attr = PyUnicode_InternFromString("id")) ||
        !(C.lower = PyUnicode_InternFromString("lower")) ||
        !(C.managed = PyUnicode_InternFromString("managedidentity")) ||
        !(C.user = PyUnicode_InternFromString("user")) ||
        !(C.service_principal = PyUnicode_InternFromString("serviceprincipal")) ||
        !(C.actor_kw = kwnames(actor_kw, 6)) || !(C.event_kw = kwnames(event_kw, 9)))
        return NULL;
    configured = 1;
    Py_RETURN_NONE;
}

/* json_path(data, keys): the bytes of the value at a path of member names in a JSON object's bytes, None
where the path is absent (a member missing, or a value on the way not an object), NotImplemented where the
caller must decode the whole document instead (see js_find_path). Rules read one or two fields of an
event's raw record; decoding all of it for them (and freeing it) cost more than the rest of matching. */
static PyObject *json_path(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "json_path(data, keys: tuple[str, ...])");
        return NULL;
    }
    PyObject *keys = args[1];
    js_path path;
    path.n = (int)PyTuple_GET_SIZE(keys);
    if (path.n < 1 || path.n > JS_PATH_MAX) Py_RETURN_NOTIMPLEMENTED;
    for (int i = 0; i < path.n; i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        if (!PyUnicode_Check(key)) Py_RETURN_NOTIMPLEMENTED;
        path.keys[i] = PyUnicode_AsUTF8AndSize(key, &path.lens[i]);
        if (path.keys[i] == NULL) {
            PyErr_Clear(); /* (a lone surrogate cannot be a key of valid JSON: the full decode decides) */
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *vs = NULL, *ve = NULL;
    int r = js_find_path(view.buf, view.len, &path, &vs, &ve);
    PyObject *out;
    if (r == JS_OK) {
        out = PyBytes_FromStringAndSize((const char *)vs, ve - vs);
    } else if (r == JS_ABSENT) {
        out = Py_NewRef(Py_None);
    } else if (r == JS_DECLINE) {
        out = Py_NewRef(Py_NotImplemented);
    } else {
        out = NULL;
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"json_path", (PyCFunction)(void (*)(void))json_path, METH_FASTCALL,
     "json_path(data, keys): the JSON bytes at a path of member names, None if absent, NotImplemented "
     "where the whole document must be decoded."},
    {"configure", (PyCFunction)(void (*)(void))activity_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, event, actor, ...): hand over the Python types and helpers the events are built with."},
    {"normalize", activity_normalize, METH_O,
     "normalize(data): the Event of one Activity Log record's JSON bytes, or None where the typed path "
     "must decide."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_activity",
                                    "The Activity Log's compiled fast path (see _activity.c).", -1, methods};

PyMODINIT_FUNC PyInit__activity(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    return PyModule_Create(&module);
}
