/* The spans of an ExportTraceServiceRequest body, read from its protobuf wire
 * format without making a Python object per attribute (ingest/intake/otlp/mapping.py,
 * "span views"). Only what the mapping reads is returned.
 *
 * views(body, wanted) -> list (per resourceSpans) of lists (per scopeSpans) of
 * lists (per span) of a view tuple:
 *   (trace_id, span_id, name, kind, end_time_unix_nano, status code,
 *    {wanted key: value}, any key starts with "messaging.", ({wanted key: value}
 *    per link, ...))
 * or None for a span this walker leaves to the official types (a wanted
 * attribute whose value is an array, a kvlist or anything unusual: a field
 * repeated where the official decoder would merge, a wire type it does not
 * expect). Returns None for the whole request when its outer structure is not
 * what it expects. The body has been parsed by the official types first; the
 * walker still checks every length against the end of the buffer, reads at
 * most 10 bytes a varint and does not recurse.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_WANTED 64
#define MESSAGING "messaging."
#define MESSAGING_LEN 10

enum { OK = 0, ERROR = -1, GIVE_UP = 1 };

typedef struct {
    const char *key[MAX_WANTED];
    Py_ssize_t len[MAX_WANTED];
    PyObject *str[MAX_WANTED];  /* borrowed from the caller's tuple */
    Py_ssize_t n;
} Wanted;

static int read_varint(const char **pp, const char *end, uint64_t *out) {
    const char *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && p < end; shift += 7) {
        uint8_t b = (uint8_t)*p++;
        if (shift == 63 && (b & 0x7e))
            return 0; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* The next field's number and wire type; 0 at a malformed tag. */
static int read_tag(const char **pp, const char *end, uint32_t *field, int *wt) {
    uint64_t tag;
    if (!read_varint(pp, end, &tag) || tag > UINT32_MAX || (tag >> 3) == 0)
        return 0;
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    return 1;
}

/* A length-delimited field's bytes [*start, *stop). */
static int read_len(const char **pp, const char *end, const char **start, const char **stop) {
    uint64_t n;
    if (!read_varint(pp, end, &n) || n > (uint64_t)(end - *pp))
        return 0;
    *start = *pp;
    *stop = *pp + n;
    *pp = *stop;
    return 1;
}

/* Past a field the walker does not read; 0 for groups (deprecated) and bad wire types. */
static int skip(const char **pp, const char *end, int wt) {
    uint64_t v;
    const char *a, *b;
    switch (wt) {
    case 0:
        return read_varint(pp, end, &v);
    case 1:
        if (end - *pp < 8)
            return 0;
        *pp += 8;
        return 1;
    case 2:
        return read_len(pp, end, &a, &b);
    case 5:
        if (end - *pp < 4)
            return 0;
        *pp += 4;
        return 1;
    default:
        return 0;
    }
}

static uint64_t fixed64(const char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | (uint8_t)p[i];
    return v;
}

static PyObject *wanted_key(const Wanted *w, const char *key, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < w->n; i++)
        if (w->len[i] == len && memcmp(w->key[i], key, (size_t)len) == 0)
            return w->str[i];
    return NULL;
}

/* An AnyValue as the Python value the official types give (None when empty). */
static int any_value(const char *p, const char *end, PyObject **out) {
    PyObject *value = NULL;
    int seen = 0;
    while (p < end) {
        uint32_t field;
        int wt;
        uint64_t v;
        const char *a, *b;
        if (!read_tag(&p, end, &field, &wt))
            goto give_up;
        if (field >= 1 && field <= 7 && ++seen > 1)
            goto give_up; /* a oneof set twice: left to the official types */
        switch (field) {
        case 1: /* string_value */
        case 7: /* bytes_value */
            if (wt != 2 || !read_len(&p, end, &a, &b))
                goto give_up;
            if (field == 1) {
                value = PyUnicode_DecodeUTF8(a, b - a, "strict");
                if (value == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                        return ERROR;
                    PyErr_Clear();
                    goto give_up;
                }
            } else {
                value = PyBytes_FromStringAndSize(a, b - a);
                if (value == NULL)
                    return ERROR;
            }
            break;
        case 2: /* bool_value */
        case 3: /* int_value */
            if (wt != 0 || !read_varint(&p, end, &v))
                goto give_up;
            if (field == 2)
                value = PyBool_FromLong(v != 0);
            else
                value = PyLong_FromLongLong((long long)(int64_t)v);
            if (value == NULL)
                return ERROR;
            break;
        case 4: /* double_value */
            if (wt != 1 || end - p < 8)
                goto give_up;
            {
                uint64_t bits = fixed64(p);
                double d;
                memcpy(&d, &bits, sizeof d);
                value = PyFloat_FromDouble(d);
            }
            p += 8;
            if (value == NULL)
                return ERROR;
            break;
        case 5: /* array_value */
        case 6: /* kvlist_value */
            goto give_up;
        default:
            if (!skip(&p, end, wt))
                goto give_up;
        }
    }
    if (value == NULL) {
        Py_INCREF(Py_None);
        value = Py_None;
    }
    *out = value;
    return OK;
give_up:
    Py_XDECREF(value);
    return GIVE_UP;
}

/* One KeyValue: into `attrs` when its key is wanted; `*messaging` set when
 * its key starts with "messaging." (may be NULL). */
static int key_value(const char *p, const char *end, const Wanted *w, PyObject *attrs,
                     int *messaging) {
    const char *key = NULL, *key_end = NULL, *val = NULL, *val_end = NULL;
    int values = 0;
    while (p < end) {
        uint32_t field;
        int wt;
        const char *a, *b;
        if (!read_tag(&p, end, &field, &wt))
            return GIVE_UP;
        if (field == 1 || field == 2) {
            if (wt != 2 || !read_len(&p, end, &a, &b))
                return GIVE_UP;
            if (field == 1) {
                key = a; /* the last one wins, as in the official decoder */
                key_end = b;
            } else {
                val = a;
                val_end = b;
                values++;
            }
        } else if (!skip(&p, end, wt)) {
            return GIVE_UP;
        }
    }
    Py_ssize_t len = key == NULL ? 0 : key_end - key;
    if (messaging != NULL && len >= MESSAGING_LEN && memcmp(key, MESSAGING, MESSAGING_LEN) == 0)
        *messaging = 1;
    PyObject *name = wanted_key(w, key == NULL ? "" : key, len);
    if (name == NULL)
        return OK;
    if (values > 1)
        return GIVE_UP; /* two values are merged by the official decoder */
    PyObject *value;
    if (val == NULL) {
        Py_INCREF(Py_None);
        value = Py_None;
    } else {
        int rc = any_value(val, val_end, &value);
        if (rc != OK)
            return rc;
    }
    int rc = PyDict_SetItem(attrs, name, value);
    Py_DECREF(value);
    return rc < 0 ? ERROR : OK;
}

/* A Link's wanted attributes, as a dict. */
static int link_attrs(const char *p, const char *end, const Wanted *w, PyObject **out) {
    PyObject *attrs = PyDict_New();
    if (attrs == NULL)
        return ERROR;
    while (p < end) {
        uint32_t field;
        int wt;
        const char *a, *b;
        int rc;
        if (!read_tag(&p, end, &field, &wt)) {
            rc = GIVE_UP;
        } else if (field == 4) { /* attributes */
            rc = (wt == 2 && read_len(&p, end, &a, &b)) ? key_value(a, b, w, attrs, NULL)
                                                         : GIVE_UP;
        } else {
            rc = skip(&p, end, wt) ? OK : GIVE_UP;
        }
        if (rc != OK) {
            Py_DECREF(attrs);
            return rc;
        }
    }
    *out = attrs;
    return OK;
}

/* A Status's code: `*code` updated when the message sets it (messages merge). */
static int status_code(const char *p, const char *end, uint64_t *code) {
    while (p < end) {
        uint32_t field;
        int wt;
        if (!read_tag(&p, end, &field, &wt))
            return GIVE_UP;
        if (field == 3) {
            if (wt != 0 || !read_varint(&p, end, code))
                return GIVE_UP;
        } else if (!skip(&p, end, wt)) {
            return GIVE_UP;
        }
    }
    return OK;
}

/* One Span as a view tuple (module comment), or GIVE_UP. */
static int span_view(const char *p, const char *end, const Wanted *w, PyObject **out) {
    const char *trace = "", *trace_end = trace, *span = "", *span_end = span;
    const char *name = "", *name_end = name;
    uint64_t kind = 0, end_time = 0, code = 0;
    int messaging = 0, rc = OK;
    PyObject *attrs = PyDict_New(), *links = PyList_New(0);
    PyObject *view = NULL, *link = NULL;
    if (attrs == NULL || links == NULL)
        goto error;
    while (p < end && rc == OK) {
        uint32_t field;
        int wt;
        const char *a, *b;
        if (!read_tag(&p, end, &field, &wt)) {
            rc = GIVE_UP;
            break;
        }
        switch (field) {
        case 1: /* trace_id */
        case 2: /* span_id */
        case 5: /* name */
        case 9: /* attributes */
        case 13: /* links */
        case 15: /* status */
            if (wt != 2 || !read_len(&p, end, &a, &b)) {
                rc = GIVE_UP;
                break;
            }
            if (field == 1) {
                trace = a;
                trace_end = b;
            } else if (field == 2) {
                span = a;
                span_end = b;
            } else if (field == 5) {
                name = a;
                name_end = b;
            } else if (field == 9) {
                rc = key_value(a, b, w, attrs, &messaging);
            } else if (field == 13) {
                rc = link_attrs(a, b, w, &link);
                if (rc == OK) {
                    int added = PyList_Append(links, link);
                    Py_CLEAR(link);
                    if (added < 0)
                        rc = ERROR;
                }
            } else {
                rc = status_code(a, b, &code);
            }
            break;
        case 6: /* kind */
            if (wt != 0 || !read_varint(&p, end, &kind))
                rc = GIVE_UP;
            break;
        case 8: /* end_time_unix_nano */
            if (wt != 1 || end - p < 8) {
                rc = GIVE_UP;
                break;
            }
            end_time = fixed64(p);
            p += 8;
            break;
        default:
            if (!skip(&p, end, wt))
                rc = GIVE_UP;
        }
    }
    if (rc == ERROR)
        goto error;
    if (rc == GIVE_UP) {
        Py_DECREF(attrs);
        Py_DECREF(links);
        return GIVE_UP;
    }
    PyObject *name_str = PyUnicode_DecodeUTF8(name, name_end - name, "strict");
    if (name_str == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            goto error;
        PyErr_Clear();
        Py_DECREF(attrs);
        Py_DECREF(links);
        return GIVE_UP;
    }
    PyObject *link_tuple = PyList_GET_SIZE(links) ? PyList_AsTuple(links) : PyTuple_New(0);
    Py_CLEAR(links);
    if (link_tuple == NULL) {
        Py_DECREF(name_str);
        goto error;
    }
    PyObject *messaging_obj = messaging ? Py_True : Py_False;
    Py_INCREF(messaging_obj);
    /* Enums are int32 on the wire (negative values sign-extended to 64 bits). */
    PyObject *items[9] = {
        PyBytes_FromStringAndSize(trace, trace_end - trace),
        PyBytes_FromStringAndSize(span, span_end - span),
        name_str,
        PyLong_FromLong((long)(int32_t)(uint32_t)kind),
        PyLong_FromUnsignedLongLong((unsigned long long)end_time),
        PyLong_FromLong((long)(int32_t)(uint32_t)code),
        attrs,
        messaging_obj,
        link_tuple,
    };
    attrs = NULL; /* owned by items now */
    view = PyTuple_New(9);
    int complete = view != NULL;
    for (int i = 0; i < 9; i++) {
        if (items[i] == NULL)
            complete = 0;
        if (view != NULL)
            PyTuple_SET_ITEM(view, i, items[i]); /* steals, NULL included */
        else
            Py_XDECREF(items[i]);
    }
    if (!complete) {
        Py_XDECREF(view);
        return ERROR;
    }
    *out = view;
    return OK;
error:
    Py_XDECREF(attrs);
    Py_XDECREF(links);
    Py_XDECREF(link);
    return ERROR;
}

typedef int (*Parse)(const char *p, const char *end, const Wanted *w, PyObject **out);

/* The repeated message field `number` of a message, each item parsed by
   `parse`, as a list. An item `parse` gives up on is None in the list when
   `none_if_given_up` (a span: the official types read it), else the whole
   list gives up. */
static int repeated(const char *p, const char *end, uint32_t number, Parse parse,
                    int none_if_given_up, const Wanted *w, PyObject **out) {
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return ERROR;
    while (p < end) {
        uint32_t field;
        int wt;
        const char *a, *b;
        if (!read_tag(&p, end, &field, &wt))
            goto give_up;
        if (field == number) {
            if (wt != 2 || !read_len(&p, end, &a, &b))
                goto give_up;
            PyObject *item = NULL;
            int rc = parse(a, b, w, &item);
            if (rc == ERROR)
                goto error;
            if (rc == GIVE_UP) {
                if (!none_if_given_up)
                    goto give_up;
                Py_INCREF(Py_None);
                item = Py_None;
            }
            int added = PyList_Append(items, item);
            Py_DECREF(item);
            if (added < 0)
                goto error;
        } else if (!skip(&p, end, wt)) {
            goto give_up;
        }
    }
    *out = items;
    return OK;
give_up:
    Py_DECREF(items);
    return GIVE_UP;
error:
    Py_DECREF(items);
    return ERROR;
}

/* A ScopeSpans's span views (field 2; None for a span left to the official types). */
static int scope_spans(const char *p, const char *end, const Wanted *w, PyObject **out) {
    return repeated(p, end, 2, span_view, 1, w, out);
}

/* A ResourceSpans's scopes (field 2): a list of scope_spans lists. */
static int resource_spans(const char *p, const char *end, const Wanted *w, PyObject **out) {
    return repeated(p, end, 2, scope_spans, 0, w, out);
}

static PyObject *views(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer body;
    PyObject *keys;
    if (!PyArg_ParseTuple(args, "y*O!:views", &body, &PyTuple_Type, &keys))
        return NULL;
    Wanted w;
    w.n = PyTuple_GET_SIZE(keys);
    PyObject *result = NULL;
    if (w.n > MAX_WANTED) {
        PyErr_SetString(PyExc_ValueError, "too many wanted keys");
        goto done;
    }
    for (Py_ssize_t i = 0; i < w.n; i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "wanted keys must be str");
            goto done;
        }
        w.key[i] = PyUnicode_AsUTF8AndSize(key, &w.len[i]);
        if (w.key[i] == NULL)
            goto done;
        w.str[i] = key;
    }
    /* The request's resourceSpans (field 1); None when the reader gives up on it. */
    int rc = repeated(body.buf, (const char *)body.buf + body.len, 1, resource_spans, 0, &w,
                      &result);
    if (rc == GIVE_UP) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
done:
    PyBuffer_Release(&body);
    return result;
}

static PyMethodDef methods[] = {
    {"views", views, METH_VARARGS,
     "views(body, wanted) -> per resourceSpans, per scopeSpans, the span views "
     "(None: read it with the official types); None for the whole request."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spans", "OTLP span views from protobuf bytes.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spans(void) { return PyModule_Create(&module); }
