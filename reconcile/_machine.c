/* The CPython binding of the reconcile machine (reconcile/machine/: plain C).
 *
 * Python sees a `Machine`: feed it log bodies (bytes written by
 * msgtally.ingest.intake.logbody), advance its clocks, drain what changed (tally
 * deltas, latency histograms and sketches, verdict rows of discrepant ids),
 * and serialize its whole state for a checkpoint. This file only turns
 * Python values into the machine's and back, and maps its failures to
 * exceptions: EngineError (a state problem, a limit), BodyError (a log body
 * the machine rejects: nothing of it applied), CheckpointError (a checkpoint
 * that does not load: the machine is left empty), MemoryError only when
 * memory ran out.
 *
 * One owner at a time: the long calls run without the GIL, so every call
 * takes the machine's busy flag (checked and set with the GIL held) and a
 * second call while one runs, from another thread, is refused (BusyError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>

#include "machine/machine.h"

typedef struct {
    PyObject *EngineError, *BodyError, *CheckpointError, *BusyError;
} ModState;

typedef struct {
    PyObject_HEAD
    Machine *m;
    int busy;
    ModState *st;
    /* Python strings of names, made once */
    PyObject **snames, **gnames;
    uint32_t nsnames, ngnames;
} MachineObject;

static PyObject *raise(MachineObject *self, int rc) {
    const char *why = mc_error(self->m);
    PyObject *type;
    switch (rc) {
        case MC_ENOMEM: return PyErr_NoMemory();
        case MC_EBODY: type = self->st->BodyError; break;
        case MC_ECHECKPOINT: type = self->st->CheckpointError; break;
        case MC_ECALLBACK:
            if (PyErr_Occurred()) return NULL;
            type = self->st->EngineError;
            break;
        default: type = self->st->EngineError; break;
    }
    PyObject *msg = PyUnicode_DecodeUTF8(why, (Py_ssize_t)strlen(why), "replace");
    if (msg) {
        PyErr_SetObject(type, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* The busy flag: 0, or -1 with BusyError set. */
static int enter(MachineObject *self) {
    if (!self->m) {
        PyErr_SetString(self->st ? self->st->EngineError : PyExc_RuntimeError, "the machine is not initialized");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(self->st->BusyError, "the machine is busy: another thread is calling it");
        return -1;
    }
    self->busy = 1;
    return 0;
}
static void leave(MachineObject *self) { self->busy = 0; }

static void clear_names(MachineObject *self) {
    for (uint32_t i = 0; i < self->nsnames; i++) Py_XDECREF(self->snames[i]);
    for (uint32_t i = 0; i < self->ngnames; i++) Py_XDECREF(self->gnames[i]);
    PyMem_Free(self->snames);
    PyMem_Free(self->gnames);
    self->snames = self->gnames = NULL;
    self->nsnames = self->ngnames = 0;
}

/* A new reference to the Python string of a name, cached by index. */
static PyObject *cached(PyObject ***cache, uint32_t *n, uint32_t i, McName name) {
    if (i >= *n) {
        uint32_t cap = *n ? *n : 16;
        while (cap <= i) cap *= 2;
        PyObject **c = PyMem_Realloc(*cache, (size_t)cap * sizeof(PyObject *));
        if (!c) return PyErr_NoMemory();
        for (uint32_t k = *n; k < cap; k++) c[k] = NULL;
        *cache = c;
        *n = cap;
    }
    if (!(*cache)[i]) {
        (*cache)[i] = PyUnicode_DecodeUTF8(name.s, name.n, "surrogatepass");
        if (!(*cache)[i]) return NULL;
    }
    Py_INCREF((*cache)[i]);
    return (*cache)[i];
}
static PyObject *stream_str(MachineObject *self, uint32_t sid) {
    return cached(&self->snames, &self->nsnames, sid, mc_stream_name(self->m, sid));
}
static PyObject *group_str(MachineObject *self, uint32_t gid) {
    return cached(&self->gnames, &self->ngnames, gid, mc_group_name(self->m, gid));
}

/* A str argument as UTF-8. */
static int name_of(PyObject *o, McName *out) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s) return -1;
    if ((size_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a name longer than 4 GiB");
        return -1;
    }
    *out = (McName){s, (uint32_t)n};
    return 0;
}

/* ----------------------------------------------------------------- life */

static void Machine_dealloc(MachineObject *self) {
    mc_free(self->m);
    clear_names(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Machine_init(MachineObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"deadline", "settle", "remember", "buckets", NULL};
    double deadline, settle, remember;
    PyObject *buckets;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dddO", names, &deadline, &settle, &remember, &buckets)) return -1;
    if (self->busy) {
        PyErr_SetString(self->st->BusyError, "the machine is busy: another thread is calling it");
        return -1;
    }
    PyObject *seq = PySequence_Fast(buckets, "buckets must be a sequence of numbers");
    if (!seq) return -1;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
    if (nb > (Py_ssize_t)MC_MAX_BUCKETS) {
        Py_DECREF(seq);
        PyErr_Format(self->st->EngineError, "more than %u latency buckets", MC_MAX_BUCKETS);
        return -1;
    }
    double *bounds = PyMem_Malloc(((size_t)nb + 1) * sizeof(double));
    if (!bounds) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < nb; i++) {
        bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) { Py_DECREF(seq); PyMem_Free(bounds); return -1; }
    }
    Py_DECREF(seq);
    Machine *m = mc_new(deadline, settle, remember, bounds, (uint32_t)nb);
    PyMem_Free(bounds);
    if (!m) { PyErr_NoMemory(); return -1; }
    mc_free(self->m);
    clear_names(self);
    self->m = m;
    return 0;
}

/* The exceptions, made once when the module is imported (read-only after). */
static ModState *the_state;

static PyObject *Machine_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    (void)args;
    (void)kw;
    MachineObject *self = (MachineObject *)type->tp_alloc(type, 0);
    if (self) self->st = the_state;
    return (PyObject *)self;
}

/* ---------------------------------------------------------------- config */

static PyObject *Machine_set_deadline(MachineObject *self, PyObject *args) {
    PyObject *stream;
    double d;
    McName s;
    if (!PyArg_ParseTuple(args, "Ud", &stream, &d) || name_of(stream, &s) || enter(self)) return NULL;
    int rc = mc_set_deadline(self->m, s, d);
    leave(self);
    if (rc) return raise(self, rc);
    Py_RETURN_NONE;
}

static PyObject *Machine_configure(MachineObject *self, PyObject *args) {
    double deadline, settle, remember;
    if (!PyArg_ParseTuple(args, "ddd", &deadline, &settle, &remember) || enter(self)) return NULL;
    int rc = mc_configure(self->m, deadline, settle, remember);
    leave(self);
    if (rc) return raise(self, rc);
    Py_RETURN_NONE;
}

static PyObject *Machine_expected(MachineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self)) return NULL;
    PyObject *out = PyDict_New();
    for (uint32_t sid = 0; out && sid < mc_nstreams(self->m); sid++) {
        PyObject *groups = PyList_New(0), *name = stream_str(self, sid);
        int bad = !groups || !name;
        for (uint32_t g = 0; !bad && g < mc_ngroups_of(self->m, sid); g++) {
            PyObject *gname = group_str(self, mc_group_of(self->m, sid, g));
            bad = !gname || PyList_Append(groups, gname);
            Py_XDECREF(gname);
        }
        if (bad || PyDict_SetItem(out, name, groups)) Py_CLEAR(out);
        Py_XDECREF(groups);
        Py_XDECREF(name);
    }
    leave(self);
    return out;
}

/* ---------------------------------------------------------------- groups */

typedef struct {
    PyObject *out, *seen;
} NewGroups;

static int new_group_cb(void *ctx, McName stream, McName group) {
    NewGroups *ng = ctx;
    PyObject *pair = Py_BuildValue("(NN)", PyUnicode_DecodeUTF8(stream.s, stream.n, "surrogatepass"),
                                   PyUnicode_DecodeUTF8(group.s, group.n, "surrogatepass"));
    if (!pair) return -1;
    int has = PySet_Contains(ng->seen, pair);
    int rc = has < 0 || (!has && (PySet_Add(ng->seen, pair) || PyList_Append(ng->out, pair))) ? -1 : 0;
    Py_DECREF(pair);
    return rc;
}

/* A body argument: bytes-like, read while the call holds it. */
static int body_of(PyObject *obj, Py_buffer *view) { return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE); }

static PyObject *Machine_new_groups(MachineObject *self, PyObject *bodies) {
    PyObject *seq = PySequence_Fast(bodies, "bodies must be a sequence");
    if (!seq) return NULL;
    if (enter(self)) { Py_DECREF(seq); return NULL; }
    NewGroups ng = {PyList_New(0), PySet_New(NULL)};
    int rc = ng.out && ng.seen ? MC_OK : MC_ECALLBACK;
    for (Py_ssize_t b = 0; !rc && b < PySequence_Fast_GET_SIZE(seq); b++) {
        Py_buffer view;
        if (body_of(PySequence_Fast_GET_ITEM(seq, b), &view)) { rc = MC_ECALLBACK; break; }
        rc = mc_new_groups(self->m, view.buf, (size_t)view.len, new_group_cb, &ng);
        PyBuffer_Release(&view);
    }
    leave(self);
    Py_DECREF(seq);
    Py_XDECREF(ng.seen);
    if (rc) {
        Py_XDECREF(ng.out);
        return PyErr_Occurred() ? NULL : raise(self, rc);
    }
    return ng.out;
}

/* The new groups the machine's checks counted, from the `from`-th on, into
 * `ng`; -1 with the Python error set. They point into the bodies checked:
 * called while those are held. */
static int checked_groups(MachineObject *self, NewGroups *ng, size_t from) {
    McName stream, group;
    size_t n = mc_checked_groups(self->m, &stream, &group, 0);
    for (size_t i = from; i < n; i++) {
        mc_checked_groups(self->m, &stream, &group, i);
        if (new_group_cb(ng, stream, group)) return -1;
    }
    return 0;
}

/* screen(bodies) -> (new_groups, rejected): the bodies the machine would
 * reject, [(index, reason)], each checked with the new groups of the bodies
 * before it; and the (stream, group) pairs the others would add. One read of
 * each body. */
static PyObject *Machine_screen(MachineObject *self, PyObject *bodies) {
    PyObject *seq = PySequence_Fast(bodies, "bodies must be a sequence");
    if (!seq) return NULL;
    if (enter(self)) { Py_DECREF(seq); return NULL; }
    NewGroups ng = {PyList_New(0), PySet_New(NULL)};
    PyObject *rejected = PyList_New(0);
    int rc = ng.out && ng.seen && rejected ? MC_OK : MC_ECALLBACK;
    mc_check_reset(self->m);
    for (Py_ssize_t b = 0; !rc && b < PySequence_Fast_GET_SIZE(seq); b++) {
        Py_buffer view;
        if (body_of(PySequence_Fast_GET_ITEM(seq, b), &view)) { rc = MC_ECALLBACK; break; }
        int got = mc_check(self->m, view.buf, (size_t)view.len);
        if (got == MC_EBODY) {
            const char *why = mc_error(self->m);
            PyObject *row = Py_BuildValue("(nN)", b, PyUnicode_DecodeUTF8(why, (Py_ssize_t)strlen(why), "replace"));
            if (!row || PyList_Append(rejected, row)) rc = MC_ECALLBACK;
            Py_XDECREF(row);
        } else if (got) {
            rc = got;
        } else {
            /* its new groups, while the body is held (they point into it) */
            if (checked_groups(self, &ng, (size_t)PyList_GET_SIZE(ng.out))) rc = MC_ECALLBACK;
        }
        PyBuffer_Release(&view);
    }
    mc_check_reset(self->m);
    leave(self);
    Py_DECREF(seq);
    Py_XDECREF(ng.seen);
    if (rc) {
        Py_XDECREF(ng.out);
        Py_XDECREF(rejected);
        return PyErr_Occurred() ? NULL : raise(self, rc);
    }
    return Py_BuildValue("(NN)", ng.out, rejected);
}

/* A list of str as names; *names is PyMem: free it. */
static int names_of(PyObject *list, McName **names, Py_ssize_t *n) {
    PyObject *seq = PySequence_Fast(list, "groups must be a sequence of str");
    if (!seq) return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *names = PyMem_Malloc(((size_t)*n + 1) * sizeof(McName));
    if (!*names) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "groups must be a sequence of str");
            goto fail;
        }
        if (name_of(item, &(*names)[i])) goto fail;
    }
    /* the UTF-8 of each str lives as long as the str: the list holds them */
    Py_DECREF(seq);
    return 0;
fail:
    PyMem_Free(*names);
    Py_DECREF(seq);
    return -1;
}

static PyObject *expect_names(MachineObject *self, McName stream, const McName *groups, Py_ssize_t n) {
    if (enter(self)) return NULL;
    uint32_t added;
    int rc;
    Py_BEGIN_ALLOW_THREADS /* one walk of the ids in memory */
    rc = mc_expect(self->m, stream, groups, (uint32_t)n, &added);
    Py_END_ALLOW_THREADS
    leave(self);
    if (rc) return raise(self, rc);
    return PyLong_FromUnsignedLong(added);
}

/* expect(stream, group) -> bool: the group now receives the stream. Every
 * produced id of the stream still in memory owes the group a verdict, judged
 * ones included. */
static PyObject *Machine_expect(MachineObject *self, PyObject *args) {
    PyObject *stream, *group;
    McName s, g;
    if (!PyArg_ParseTuple(args, "UU", &stream, &group) || name_of(stream, &s) || name_of(group, &g)) return NULL;
    PyObject *added = expect_names(self, s, &g, 1);
    if (!added) return NULL;
    int yes = PyObject_IsTrue(added);
    Py_DECREF(added);
    return PyBool_FromLong(yes);
}

/* expect_groups(stream, groups) -> n added: expect() for many, one walk of the ids in memory. */
static PyObject *Machine_expect_groups(MachineObject *self, PyObject *args) {
    PyObject *stream, *groups;
    McName s, *g;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "UO", &stream, &groups) || name_of(stream, &s) || names_of(groups, &g, &n)) return NULL;
    PyObject *out = expect_names(self, s, g, n);
    PyMem_Free(g);
    return out;
}

/* ---------------------------------------------------------------- applying */

/* apply(body, received_at): folds a log body into the state, whole or not at
 * all (BodyError). Verdicts wait for advance(), so that every body of a tick
 * is in before any of them. Records of forgotten ids with a stored verdict
 * wait for deferred_keys / install / apply_deferred. */
static PyObject *Machine_apply(MachineObject *self, PyObject *args) {
    PyObject *body;
    double received_at;
    if (!PyArg_ParseTuple(args, "Sd", &body, &received_at) || enter(self)) return NULL;
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(body);
    size_t len = (size_t)PyBytes_GET_SIZE(body);
    uint32_t n = 0;
    int rc;
    /* bytes are immutable, and the argument holds them for the call */
    Py_BEGIN_ALLOW_THREADS
    rc = mc_apply(self->m, buf, len, received_at, &n);
    Py_END_ALLOW_THREADS
    leave(self);
    if (rc) return raise(self, rc);
    return PyLong_FromUnsignedLong(n);
}

/* feed(body, received_at, now) -> (records, new_groups, waiting): a worker's
 * step, the body read once. A body naming groups the machine does not expect
 * yet applies nothing: (0, [(stream, group)], False), for the caller to expect
 * (back-fill) them and feed it again. Else it is applied, and judged at
 * (now, now) unless records wait for their verdict rows (waiting True:
 * deferred_keys, install, apply_deferred, then advance). A body the machine
 * rejects raises BodyError, nothing of it applied. */
static PyObject *Machine_feed(MachineObject *self, PyObject *args) {
    PyObject *body;
    double received_at, now;
    if (!PyArg_ParseTuple(args, "Sdd", &body, &received_at, &now) || enter(self)) return NULL;
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(body);
    size_t len = (size_t)PyBytes_GET_SIZE(body);
    uint32_t n = 0;
    int state = MC_FEED_JUDGED, rc;
    Py_BEGIN_ALLOW_THREADS /* bytes are immutable, and the argument holds them for the call */
    rc = mc_feed(self->m, buf, len, received_at, now, &n, &state);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (!rc && state == MC_FEED_NEW_GROUPS) {
        /* the names point into the body, held by the argument */
        NewGroups ng = {PyList_New(0), PySet_New(NULL)};
        int bad = !ng.out || !ng.seen || checked_groups(self, &ng, 0);
        mc_check_reset(self->m);
        Py_XDECREF(ng.seen);
        if (bad) Py_CLEAR(ng.out);
        else out = Py_BuildValue("(IOO)", 0u, ng.out, Py_False);
        Py_XDECREF(ng.out);
    } else if (!rc) {
        out = Py_BuildValue("(IOO)", n, Py_None, state == MC_FEED_DEFERRED ? Py_True : Py_False);
    }
    leave(self);
    if (rc) return raise(self, rc);
    return out;
}

static PyObject *Machine_deferred_keys(MachineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self)) return NULL;
    size_t n;
    mc_deferred_count(self->m, &n);
    PyObject *out = PyList_New(0), *seen = PySet_New(NULL);
    for (size_t i = 0; out && seen && i < n; i++) {
        McName s, id;
        mc_deferred_key(self->m, i, &s, &id);
        PyObject *key = Py_BuildValue("(s#s#)", s.s, (Py_ssize_t)s.n, id.s, (Py_ssize_t)id.n);
        int bad = !key;
        if (!bad) {
            int has = PySet_Contains(seen, key);
            bad = has < 0 || (!has && (PySet_Add(seen, key) || PyList_Append(out, key)));
        }
        Py_XDECREF(key);
        if (bad) Py_CLEAR(out);
    }
    Py_XDECREF(seen);
    leave(self);
    return out;
}

static PyObject *Machine_apply_deferred(MachineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self)) return NULL;
    size_t n;
    int rc = mc_apply_deferred(self->m, &n);
    leave(self);
    if (rc) return raise(self, rc);
    return PyLong_FromSize_t(n);
}

static int class_of(const char *s) {
    for (int k = 1; k <= 5; k++)
        if (strcmp(s, MC_CLASS_NAMES[k]) == 0) return k;
    return -1;
}

/* install(rows): judged ids loaded from the verdicts table, rows as drain()
 * gives them. They are forgotten at the next advance. */
static PyObject *Machine_install(MachineObject *self, PyObject *rows) {
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (!seq) return NULL;
    if (enter(self)) { Py_DECREF(seq); return NULL; }
    size_t mark = mc_install_begin(self->m);
    int rc = MC_OK;
    for (Py_ssize_t i = 0; !rc && i < PySequence_Fast_GET_SIZE(seq); i++) {
        const char *stream, *mid, *group, *cls;
        Py_ssize_t sn, mn, gn;
        int acked, pany, late, dl;
        unsigned long long n, ok;
        unsigned int max_attempt;
        PyObject *t0o, *lato;
        double deadline;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "s#s#s#siiiOdKKIiO", &stream, &sn, &mid, &mn,
                              &group, &gn, &cls, &acked, &pany, &late, &t0o, &deadline, &n, &ok, &max_attempt,
                              &dl, &lato)) {
            rc = MC_ECALLBACK;
            break;
        }
        int c = class_of(cls);
        if (c < 0) {
            PyErr_Format(self->st->EngineError, "unknown class %s", cls);
            rc = MC_ECALLBACK;
            break;
        }
        McInstallRow row = {{stream, (uint32_t)sn}, {mid, (uint32_t)mn}, {group, (uint32_t)gn}, c, acked, pany, late,
                            dl, t0o != Py_None, lato != Py_None, 0, deadline, 0, n, ok, max_attempt};
        if (row.has_t0) row.t0 = PyFloat_AsDouble(t0o);
        if (row.has_latency) row.latency = PyFloat_AsDouble(lato);
        if (PyErr_Occurred()) { rc = MC_ECALLBACK; break; }
        rc = mc_install_row(self->m, &row);
    }
    if (!rc) rc = mc_install_finish(self->m, mark);
    leave(self);
    Py_DECREF(seq);
    if (rc) return PyErr_Occurred() ? NULL : raise(self, rc);
    Py_RETURN_NONE;
}

/* advance(now, receipt_watermark): early verdicts for the ids applied since the
 * last advance, then judges and forgets what is due. An id is due once `now`
 * passed its deadline + settle and the receipt watermark passed its first
 * receipt + settle. */
static PyObject *Machine_advance(MachineObject *self, PyObject *args) {
    double now, watermark;
    if (!PyArg_ParseTuple(args, "dd", &now, &watermark) || enter(self)) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS /* the collector's threads run while the machine judges */
    rc = mc_advance(self->m, now, watermark);
    Py_END_ALLOW_THREADS
    leave(self);
    if (rc) return raise(self, rc);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- sketches */

/* Latency-sketch bins summed over drains and machines, per (stream, group): a
 * worker's commit adds up the bins of every drain of every partition it
 * commits, hundreds of thousands, and a Python step per bin (a dict made per
 * pair, an addition per bin) cost more than the rest of the commit. The bins
 * of one pair are the machine's McBins. */
typedef struct {
    PyObject_HEAD
    PyObject *index; /* {(stream, group): i}, i into bins */
    McBins *bins;
    Py_ssize_t n, cap;
} SketchesObject;

static PyTypeObject SketchesType;

/* Adds to a pair's bins; -1 with MemoryError set. */
static int bins_add(McBins *b, int32_t key, int64_t count) {
    if (mc_bins_add(b, key, count) == 0) return 0;
    PyErr_NoMemory();
    return -1;
}

/* The bins of (stream, group), made empty when new; NULL with an exception set. */
static McBins *sketch_of(SketchesObject *sk, PyObject *stream, PyObject *group) {
    PyObject *key = PyTuple_Pack(2, stream, group);
    if (!key) return NULL;
    PyObject *at = PyDict_GetItemWithError(sk->index, key);
    Py_ssize_t i;
    if (at) {
        i = PyLong_AsSsize_t(at);
    } else if (PyErr_Occurred()) {
        i = -1;
    } else {
        if (sk->n == sk->cap) {
            Py_ssize_t cap = sk->cap ? sk->cap * 2 : 8;
            McBins *grown = PyMem_Realloc(sk->bins, (size_t)cap * sizeof *grown);
            if (!grown) {
                Py_DECREF(key);
                PyErr_NoMemory();
                return NULL;
            }
            sk->bins = grown;
            sk->cap = cap;
        }
        i = sk->n;
        PyObject *v = PyLong_FromSsize_t(i);
        if (!v || PyDict_SetItem(sk->index, key, v)) i = -1;
        else sk->bins[sk->n++] = (McBins){0};
        Py_XDECREF(v);
    }
    Py_DECREF(key);
    return i < 0 ? NULL : &sk->bins[i];
}

static PyObject *Sketches_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if ((args && PyTuple_GET_SIZE(args)) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Sketches() takes no arguments");
        return NULL;
    }
    SketchesObject *sk = (SketchesObject *)type->tp_alloc(type, 0);
    if (!sk) return NULL;
    sk->index = PyDict_New();
    if (!sk->index) {
        Py_DECREF(sk);
        return NULL;
    }
    return (PyObject *)sk;
}

static void Sketches_dealloc(SketchesObject *sk) {
    for (Py_ssize_t i = 0; i < sk->n; i++) mc_bins_free(&sk->bins[i]);
    PyMem_Free(sk->bins);
    Py_XDECREF(sk->index);
    Py_TYPE(sk)->tp_free((PyObject *)sk);
}

/* add(stream, group, bins): {bin: count} (a mapping) added to the pair's bins. */
static PyObject *Sketches_add(SketchesObject *sk, PyObject *args) {
    PyObject *stream, *group, *mapping;
    if (!PyArg_ParseTuple(args, "UUO", &stream, &group, &mapping)) return NULL;
    PyObject *bins = PyDict_New(); /* a copy: a dict to walk whatever the mapping */
    if (!bins || PyDict_Update(bins, mapping)) {
        Py_XDECREF(bins);
        return NULL;
    }
    McBins *b = sketch_of(sk, stream, group);
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (b && PyDict_Next(bins, &pos, &k, &v)) {
        long key = PyLong_AsLong(k);
        long long count = key == -1 && PyErr_Occurred() ? -1 : PyLong_AsLongLong(v);
        if (!PyErr_Occurred() && (key <= INT32_MIN || key > INT32_MAX))
            PyErr_Format(PyExc_ValueError, "sketch bin %ld out of range", key);
        if (PyErr_Occurred() || bins_add(b, (int32_t)key, count)) b = NULL;
    }
    Py_DECREF(bins);
    if (!b) return NULL;
    Py_RETURN_NONE;
}

/* merge(other): every bin of another Sketches added to this one's. */
static PyObject *Sketches_merge(SketchesObject *sk, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &SketchesType)) {
        PyErr_SetString(PyExc_TypeError, "merge() takes a Sketches");
        return NULL;
    }
    SketchesObject *other = (SketchesObject *)arg;
    if (other == sk) {
        PyErr_SetString(PyExc_ValueError, "a Sketches cannot merge itself");
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *at;
    while (PyDict_Next(other->index, &pos, &key, &at)) {
        McBins *from = &other->bins[PyLong_AsSsize_t(at)];
        McBins *into = sketch_of(sk, PyTuple_GET_ITEM(key, 0), PyTuple_GET_ITEM(key, 1));
        if (!into) return NULL;
        for (uint32_t j = 0; from->keys && j <= from->mask; j++)
            if (from->keys[j] != INT32_MIN && bins_add(into, from->keys[j], from->vals[j])) return NULL;
    }
    Py_RETURN_NONE;
}

/* columns() -> (streams, groups, bins, counts): one row per bin whose sum is not 0. */
static PyObject *Sketches_columns(SketchesObject *sk, PyObject *Py_UNUSED(ignored)) {
    PyObject *cols[4] = {PyList_New(0), PyList_New(0), PyList_New(0), PyList_New(0)};
    int bad = !cols[0] || !cols[1] || !cols[2] || !cols[3];
    Py_ssize_t pos = 0;
    PyObject *key, *at;
    while (!bad && PyDict_Next(sk->index, &pos, &key, &at)) {
        McBins *b = &sk->bins[PyLong_AsSsize_t(at)];
        for (uint32_t j = 0; !bad && b->keys && j <= b->mask; j++) {
            if (b->keys[j] == INT32_MIN || !b->vals[j]) continue;
            PyObject *bin = PyLong_FromLong(b->keys[j]), *count = PyLong_FromLongLong(b->vals[j]);
            bad = !bin || !count || PyList_Append(cols[0], PyTuple_GET_ITEM(key, 0)) ||
                  PyList_Append(cols[1], PyTuple_GET_ITEM(key, 1)) || PyList_Append(cols[2], bin) ||
                  PyList_Append(cols[3], count);
            Py_XDECREF(bin);
            Py_XDECREF(count);
        }
    }
    if (bad) {
        for (int c = 0; c < 4; c++) Py_XDECREF(cols[c]);
        return NULL;
    }
    return Py_BuildValue("(NNNN)", cols[0], cols[1], cols[2], cols[3]);
}

static PyMethodDef Sketches_methods[] = {
    {"add", (PyCFunction)Sketches_add, METH_VARARGS, "add(stream, group, {bin: count})"},
    {"merge", (PyCFunction)Sketches_merge, METH_O, "merge(other): another Sketches' bins added to these"},
    {"columns", (PyCFunction)Sketches_columns, METH_NOARGS,
     "columns() -> (streams, groups, bins, counts): a row per bin whose sum is not 0"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject SketchesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "msgtally.reconcile._machine.Sketches",
    .tp_basicsize = sizeof(SketchesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Sketches_new,
    .tp_dealloc = (destructor)Sketches_dealloc,
    .tp_methods = Sketches_methods,
    .tp_doc = "Latency-sketch bins summed per (stream, group), over drains and machines.",
};

/* ---------------------------------------------------------------- outputs */

typedef struct {
    MachineObject *self;
    PyObject *pairs, *verdicts, *missing, *errors;
    SketchesObject *sketches; /* drain_copy: where the pairs' bins go (their dicts left empty) */
    char *text; /* drain_copy: the verdict rows as COPY text (PyMem) */
    size_t len, cap;
} Drained;

/* The tallies' names as Python strings, made once (module init): the keys of
 * every pair's counts (a key made from its C string each time cost ~1,000
 * instructions). */
static PyObject *tally_keys[MC_N_TALLY];

static int pair_cb(void *ctx, const McPairOut *p) {
    Drained *d = ctx;
    PyObject *counts = PyDict_New(), *hist = PyTuple_New(p->nhist), *bins = PyDict_New();
    if (!counts || !hist || !bins) goto fail;
    for (int k = 0; k < MC_N_TALLY; k++) {
        if (!p->counts[k]) continue;
        PyObject *v = PyLong_FromLongLong(p->counts[k]);
        if (!v || PyDict_SetItem(counts, tally_keys[k], v)) { Py_XDECREF(v); goto fail; }
        Py_DECREF(v);
    }
    for (uint32_t b = 0; b < p->nhist; b++) {
        PyObject *v = PyLong_FromLongLong(p->hist[b]);
        if (!v) goto fail;
        PyTuple_SET_ITEM(hist, b, v);
    }
    PyObject *stream = stream_str(d->self, p->sid), *group = stream ? group_str(d->self, p->gid) : NULL;
    if (!group) {
        Py_XDECREF(stream);
        goto fail;
    }
    McBins *into = NULL;
    if (d->sketches && !(into = sketch_of(d->sketches, stream, group))) {
        Py_DECREF(stream);
        Py_DECREF(group);
        goto fail;
    }
    for (uint32_t i = 0; i < p->nbins; i++) {
        if (p->bin_keys[i] == INT32_MIN || !p->bin_vals[i]) continue;
        int bad;
        if (into) {
            bad = bins_add(into, p->bin_keys[i], p->bin_vals[i]);
        } else {
            PyObject *k = PyLong_FromLong(p->bin_keys[i]), *v = PyLong_FromLongLong(p->bin_vals[i]);
            bad = !k || !v || PyDict_SetItem(bins, k, v);
            Py_XDECREF(k);
            Py_XDECREF(v);
        }
        if (bad) {
            Py_DECREF(stream);
            Py_DECREF(group);
            goto fail;
        }
    }
    PyObject *row = Py_BuildValue("(NNNdNN)", stream, group, counts, p->latency_sum, hist, bins);
    if (!row) return -1;
    int rc = PyList_Append(d->pairs, row);
    Py_DECREF(row);
    return rc;
fail:
    Py_XDECREF(counts);
    Py_XDECREF(hist);
    Py_XDECREF(bins);
    return -1;
}

static int verdict_cb(void *ctx, const McVerdict *v) {
    Drained *d = ctx;
    PyObject *t0 = v->has_t0 ? PyFloat_FromDouble(v->t0) : (Py_INCREF(Py_None), Py_None);
    PyObject *lat = v->has_latency ? PyFloat_FromDouble(v->latency) : (Py_INCREF(Py_None), Py_None);
    PyObject *row = Py_BuildValue("(NNNsiiiNdKKIiN)", stream_str(d->self, v->sid),
                                  PyUnicode_DecodeUTF8(v->id, v->idlen, "surrogatepass"), group_str(d->self, v->gid),
                                  MC_CLASS_NAMES[v->cls], v->acked, v->pany, v->late, t0, v->deadline,
                                  (unsigned long long)v->n, (unsigned long long)v->ok, v->max_attempt, v->dl, lat);
    if (!row) return -1;
    int rc = PyList_Append(d->verdicts, row);
    Py_DECREF(row);
    return rc;
}

/* Room for `more` bytes in the COPY text; -1 (MemoryError set) when there is none. */
static int text_room(Drained *d, size_t more) {
    if (d->len + more <= d->cap) return 0;
    size_t cap = d->cap ? d->cap : 4096;
    while (cap < d->len + more) cap *= 2;
    char *grown = PyMem_Realloc(d->text, cap);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    d->text = grown;
    d->cap = cap;
    return 0;
}

/* A text field of COPY's text format: backslash, tab, newline and carriage
 * return escaped (they delimit or escape), every other byte as it is. */
static int text_name(Drained *d, const char *s, size_t n) {
    if (text_room(d, 2 * n + 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        switch (c) {
            case '\\': d->text[d->len++] = '\\'; d->text[d->len++] = '\\'; break;
            case '\t': d->text[d->len++] = '\\'; d->text[d->len++] = 't'; break;
            case '\n': d->text[d->len++] = '\\'; d->text[d->len++] = 'n'; break;
            case '\r': d->text[d->len++] = '\\'; d->text[d->len++] = 'r'; break;
            default: d->text[d->len++] = c;
        }
    }
    d->text[d->len++] = '\t';
    return 0;
}

/* An integer field, in decimal (by hand: snprintf costs several hundred
 * instructions a call, and a row has eight of them). */
static int text_uint(Drained *d, uint64_t x, char end) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    if (text_room(d, (size_t)n + 1)) return -1;
    while (n) d->text[d->len++] = digits[--n];
    d->text[d->len++] = end;
    return 0;
}

/* A finite double in C99's hexadecimal form, as "%a" writes it ("-0x1.8p+1",
 * "0x0p+0", subnormals "0x0.8p-1022"): exact, read back by strtod and
 * float.fromhex. By hand: snprintf's "%a" cost ~1,400 instructions a call, a
 * fifth of the worker's instructions outside the machine. `out` holds 32 bytes
 * at least; returns the length written. */
static int hex_double(char *out, double x) {
    static const char HEX[] = "0123456789abcdef";
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int n = 0;
    if (bits >> 63) out[n++] = '-';
    int exp = (int)((bits >> 52) & 0x7ff);
    uint64_t mant = bits & ((UINT64_C(1) << 52) - 1);
    out[n++] = '0';
    out[n++] = 'x';
    out[n++] = exp ? '1' : '0';
    if (mant) {
        out[n++] = '.';
        int digits = 13;
        while (!(mant & 0xf)) { mant >>= 4; digits--; } /* trailing zeros dropped */
        for (int i = digits - 1; i >= 0; i--) out[n++] = HEX[(mant >> (4 * i)) & 0xf];
    }
    int e = exp ? exp - 1023 : (bits << 1 ? -1022 : 0);
    out[n++] = 'p';
    out[n++] = e < 0 ? '-' : '+';
    unsigned u = (unsigned)(e < 0 ? -e : e);
    char digits[4];
    int k = 0;
    do {
        digits[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (k) out[n++] = digits[--k];
    return n;
}

/* A float8 field: the double in hexadecimal (hex_double: exact, PostgreSQL reads
 * it with C99's strtod, outputs.parse_copied with float.fromhex), PostgreSQL's
 * names for the infinities and NaN, or NULL (\\N). */
static int text_double(Drained *d, int present, double x, char end) {
    if (text_room(d, 40)) return -1;
    char *at = d->text + d->len;
    size_t n;
    if (!present) { memcpy(at, "\\N", 2); n = 2; }
    else if (isnan(x)) { memcpy(at, "NaN", 3); n = 3; }
    else if (isinf(x)) { n = x < 0 ? 9 : 8; memcpy(at, x < 0 ? "-Infinity" : "Infinity", n); }
    else n = (size_t)hex_double(at, x);
    at[n++] = end;
    d->len += n;
    return 0;
}

/* A verdict row as a line of COPY text, VERDICT_COLUMNS' order. */
static int verdict_text_cb(void *ctx, const McVerdict *v) {
    Drained *d = ctx;
    McName stream = mc_stream_name(d->self->m, v->sid), group = mc_group_name(d->self->m, v->gid);
    const char *cls = MC_CLASS_NAMES[v->cls];
    if (text_name(d, stream.s, stream.n) || text_name(d, v->id, v->idlen) || text_name(d, group.s, group.n) ||
        text_name(d, cls, strlen(cls)) || text_uint(d, v->acked, '\t') || text_uint(d, v->pany, '\t') ||
        text_uint(d, v->late, '\t') || text_double(d, v->has_t0, v->t0, '\t') || text_double(d, 1, v->deadline, '\t') ||
        text_uint(d, v->n, '\t') || text_uint(d, v->ok, '\t') || text_uint(d, v->max_attempt, '\t') ||
        text_uint(d, v->dl, '\t'))
        return -1;
    return text_double(d, v->has_latency, v->latency, '\n');
}

static int missing_cb(void *ctx, uint32_t sid, int consume, uint32_t gid, int64_t n) {
    Drained *d = ctx;
    PyObject *key = Py_BuildValue("(NsN)", stream_str(d->self, sid), consume ? "consume" : "produce",
                                  consume ? group_str(d->self, gid) : PyUnicode_FromString(""));
    PyObject *v = key ? PyLong_FromLongLong(n) : NULL;
    PyObject *had = v ? PyDict_GetItemWithError(d->missing, key) : NULL;
    PyObject *sum = had ? PyNumber_Add(had, v) : (v && !PyErr_Occurred() ? (Py_INCREF(v), v) : NULL);
    int rc = !sum || PyDict_SetItem(d->missing, key, sum) ? -1 : 0;
    Py_XDECREF(sum);
    Py_XDECREF(v);
    Py_XDECREF(key);
    return rc;
}

static int errors_cb(void *ctx, uint32_t sid, int consume, uint32_t gid, const int64_t *counts) {
    Drained *d = ctx;
    for (int k = 0; k < MC_N_ERROR; k++) {
        if (!counts[k]) continue;
        PyObject *key = Py_BuildValue("(NsNs)", stream_str(d->self, sid), consume ? "consume" : "produce",
                                      consume ? group_str(d->self, gid) : PyUnicode_FromString(""), MC_ERROR_NAMES[k]);
        PyObject *v = key ? PyLong_FromLongLong(counts[k]) : NULL;
        int rc = !v || PyDict_SetItem(d->errors, key, v) ? -1 : 0;
        Py_XDECREF(v);
        Py_XDECREF(key);
        if (rc) return -1;
    }
    return 0;
}

/* drain() -> (pairs, verdicts, missing, errors): what changed since the last drain.
 * pairs: [(stream, group, {tally: delta}, latency_sum, histogram, sketch bins)];
 * missing: {(stream, kind, group): records declared missing};
 * errors: {(stream, kind, group, error class): records applied} (group "" for a produce).
 * With `sketches` (drain_copy), the verdict rows come as one bytes object of
 * PostgreSQL COPY text, a line a row in the order judged, instead of tuples,
 * and the pairs' sketch bins are added to `sketches` instead. */
static PyObject *drain_as(MachineObject *self, SketchesObject *sketches) {
    int text = sketches != NULL;
    if (enter(self)) return NULL;
    Drained d = {self, PyList_New(0), text ? NULL : PyList_New(0), PyDict_New(), PyDict_New(), sketches, NULL, 0, 0};
    int rc = d.pairs && (text || d.verdicts) && d.missing && d.errors ? MC_OK : MC_ECALLBACK;
    if (!rc) {
        McSink sink = {&d, pair_cb, text ? verdict_text_cb : verdict_cb, missing_cb, errors_cb};
        rc = mc_drain(self->m, &sink);
    }
    if (!rc && text) {
        d.verdicts = PyBytes_FromStringAndSize(d.text, (Py_ssize_t)d.len);
        if (!d.verdicts) rc = MC_ECALLBACK;
    }
    PyMem_Free(d.text);
    leave(self);
    if (rc) {
        Py_XDECREF(d.pairs);
        Py_XDECREF(d.verdicts);
        Py_XDECREF(d.missing);
        Py_XDECREF(d.errors);
        return PyErr_Occurred() ? NULL : raise(self, rc);
    }
    return Py_BuildValue("(NNNN)", d.pairs, d.verdicts, d.missing, d.errors);
}

static PyObject *Machine_drain(MachineObject *self, PyObject *Py_UNUSED(ignored)) { return drain_as(self, NULL); }

/* drain_copy(sketches): drain() for a worker's commit, which writes verdict rows
 * with COPY and sums sketch bins over partitions: the verdict rows as COPY
 * text, the pairs' sketch bins added to `sketches` (their own dicts empty). */
static PyObject *Machine_drain_copy(MachineObject *self, PyObject *sketches) {
    if (!PyObject_TypeCheck(sketches, &SketchesType)) {
        PyErr_SetString(PyExc_TypeError, "drain_copy() takes a Sketches");
        return NULL;
    }
    return drain_as(self, (SketchesObject *)sketches);
}

typedef struct {
    MachineObject *self;
    PyObject *out;
} Flight;

static int flight_cb(void *ctx, uint32_t sid, uint32_t gid, int64_t n, double oldest) {
    Flight *f = ctx;
    PyObject *key = Py_BuildValue("(NN)", stream_str(f->self, sid), group_str(f->self, gid));
    PyObject *v = key ? Py_BuildValue("(Ld)", (long long)n, oldest) : NULL;
    int rc = !v || PyDict_SetItem(f->out, key, v) ? -1 : 0;
    Py_XDECREF(key);
    Py_XDECREF(v);
    return rc;
}

/* in_flight() -> {(stream, group): (n, oldest t0)}: acknowledged ids not yet
 * judged for an expected group that has no in-time ok delivery yet, and the
 * first produce of the oldest of them. */
static PyObject *Machine_in_flight(MachineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self)) return NULL;
    Flight f = {self, PyDict_New()};
    int rc = f.out ? mc_in_flight(self->m, flight_cb, &f) : MC_ECALLBACK;
    leave(self);
    if (rc) {
        Py_XDECREF(f.out);
        return PyErr_Occurred() ? NULL : raise(self, rc);
    }
    return f.out;
}

static PyObject *Machine_stats(MachineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self)) return NULL;
    McStats s;
    mc_stats(self->m, &s);
    leave(self);
    return Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "records", s.records, "repeats",
        s.repeats, "judged", s.judged, "evicted", s.evicted, "in_memory", s.in_memory, "entry_bytes", s.entry_bytes,
        "index_bytes", s.index_bytes, "known", s.known, "compact", s.compact, "compact_bytes", s.compact_bytes,
        "compact_index_bytes", s.compact_index_bytes, "compacted", s.compacted, "records_missing",
        s.records_missing, "sequences", s.sequences, "open_holes", s.open_holes, "sequence_bytes",
        s.sequence_bytes);
}

/* ---------------------------------------------------------------- backfill */

static PyObject *Machine_backfill_scan(MachineObject *self, PyObject *args) {
    PyObject *body, *stream;
    McName s;
    if (!PyArg_ParseTuple(args, "OU", &body, &stream) || name_of(stream, &s)) return NULL;
    Py_buffer view;
    if (body_of(body, &view)) return NULL;
    if (enter(self)) { PyBuffer_Release(&view); return NULL; }
    uint32_t n = 0;
    int rc = mc_backfill_scan(self->m, view.buf, (size_t)view.len, s, &n);
    leave(self);
    PyBuffer_Release(&view);
    if (rc) return raise(self, rc);
    return PyLong_FromUnsignedLong(n);
}

/* The scanned ids owe each of the groups a verdict (one scan serves every
 * group new to the stream in a tick). */
static PyObject *Machine_backfill_finish(MachineObject *self, PyObject *args) {
    PyObject *stream, *groups;
    McName s, *g;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "UO", &stream, &groups) || name_of(stream, &s) || names_of(groups, &g, &n)) return NULL;
    if (enter(self)) { PyMem_Free(g); return NULL; }
    uint64_t owed = 0;
    int rc = mc_backfill_finish(self->m, s, g, (uint32_t)n, &owed);
    leave(self);
    PyMem_Free(g);
    if (rc) return raise(self, rc);
    return PyLong_FromUnsignedLongLong(owed);
}

/* ------------------------------------------------------------ checkpoints */

/* dumps() -> bytes: the whole state (outputs must have been drained). */
static PyObject *Machine_dumps(MachineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (enter(self)) return NULL;
    uint8_t *buf = NULL;
    size_t n = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mc_dump(self->m, &buf, &n);
    Py_END_ALLOW_THREADS
    leave(self);
    if (rc) return raise(self, rc);
    PyObject *out = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)n);
    free(buf);
    return out;
}

/* loads(bytes): replaces an empty machine's state with a checkpoint's, or
 * raises CheckpointError naming the section and field, leaving it empty. */
static PyObject *Machine_loads(MachineObject *self, PyObject *arg) {
    Py_buffer view;
    if (body_of(arg, &view)) return NULL;
    if (enter(self)) { PyBuffer_Release(&view); return NULL; }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mc_load(self->m, view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    clear_names(self); /* the names are the checkpoint's now */
    leave(self);
    PyBuffer_Release(&view);
    if (rc) return raise(self, rc);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- module */

#include "machine/logbody.h"

static PyObject *body_keys(PyObject *mod, PyObject *body) {
    /* keys(body) -> [(stream, message_id, kind)]: for tests and tools */
    ModState *st = PyModule_GetState(mod);
    Py_buffer view;
    if (body_of(body, &view)) return NULL;
    Body b;
    char err[LB_ERR];
    if (lb_open(&b, view.buf, (size_t)view.len, err)) {
        PyBuffer_Release(&view);
        PyErr_SetString(st->BodyError, err);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    Cursor c = b.records;
    for (uint32_t i = 0; out && i < b.count; i++) {
        Rec r;
        if (lb_record(&c, &r, i, err)) {
            Py_DECREF(out);
            PyBuffer_Release(&view);
            PyErr_SetString(st->BodyError, err);
            return NULL;
        }
        PyObject *t = Py_BuildValue("(s#s#s#)", r.text[F_STREAM].s, (Py_ssize_t)r.text[F_STREAM].n,
                                    r.text[F_MESSAGE_ID].s, (Py_ssize_t)r.text[F_MESSAGE_ID].n, r.text[F_KIND].s,
                                    (Py_ssize_t)r.text[F_KIND].n);
        if (!t || PyList_Append(out, t)) { Py_XDECREF(t); Py_CLEAR(out); break; }
        Py_DECREF(t);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyObject *body_groups(PyObject *mod, PyObject *body) {
    /* body_groups(body) -> [(stream, group)]: the groups a body announces to
     * every partition (version 4), [] for other versions */
    ModState *st = PyModule_GetState(mod);
    Py_buffer view;
    if (body_of(body, &view)) return NULL;
    Body b;
    char err[LB_ERR];
    uint32_t n = 0;
    int bad = lb_open(&b, view.buf, (size_t)view.len, err);
    Cursor c = b.groups;
    if (!bad && c.p) bad = lb_groups_open(&c, &n, err);
    PyObject *out = bad ? NULL : PyList_New(0);
    for (uint32_t i = 0; out && i < n; i++) {
        Str stream, group;
        if (lb_group(&c, &stream, &group, i, err)) { bad = 1; Py_CLEAR(out); break; }
        PyObject *t = Py_BuildValue("(NN)", PyUnicode_DecodeUTF8((const char *)stream.s, stream.n, "surrogatepass"),
                                    PyUnicode_DecodeUTF8((const char *)group.s, group.n, "surrogatepass"));
        if (!t || PyList_Append(out, t)) Py_CLEAR(out);
        Py_XDECREF(t);
    }
    PyBuffer_Release(&view);
    if (bad) PyErr_SetString(st->BodyError, err);
    return out;
}

static PyMethodDef Machine_methods[] = {
    {"set_deadline", (PyCFunction)Machine_set_deadline, METH_VARARGS, "set_deadline(stream, seconds)"},
    {"configure", (PyCFunction)Machine_configure, METH_VARARGS, "configure(deadline, settle, remember)"},
    {"expected", (PyCFunction)Machine_expected, METH_NOARGS, "expected() -> {stream: [group]}"},
    {"new_groups", (PyCFunction)Machine_new_groups, METH_O, "new_groups(bodies) -> [(stream, group)]"},
    {"screen", (PyCFunction)Machine_screen, METH_O,
     "screen(bodies) -> ([(stream, group)], [(index, reason)]): new groups, and the bodies apply() would reject"},
    {"expect", (PyCFunction)Machine_expect, METH_VARARGS, "expect(stream, group) -> bool"},
    {"expect_groups", (PyCFunction)Machine_expect_groups, METH_VARARGS, "expect_groups(stream, groups) -> added"},
    {"deferred_keys", (PyCFunction)Machine_deferred_keys, METH_NOARGS,
     "deferred_keys() -> [(stream, message_id)] to load before apply_deferred()"},
    {"apply_deferred", (PyCFunction)Machine_apply_deferred, METH_NOARGS, "apply_deferred() -> records"},
    {"install", (PyCFunction)Machine_install, METH_O, "install(verdict rows)"},
    {"apply", (PyCFunction)Machine_apply, METH_VARARGS, "apply(body, received_at) -> records"},
    {"feed", (PyCFunction)Machine_feed, METH_VARARGS,
     "feed(body, received_at, now) -> (records, new groups or None, waiting): apply and judge, read once"},
    {"advance", (PyCFunction)Machine_advance, METH_VARARGS, "advance(now, receipt_watermark)"},
    {"drain", (PyCFunction)Machine_drain, METH_NOARGS, "drain() -> (pairs, verdict rows, missing, errors)"},
    {"drain_copy", (PyCFunction)Machine_drain_copy, METH_O,
     "drain_copy(sketches) -> (pairs, verdict rows as PostgreSQL COPY text, missing, errors): the pairs' "
     "sketch bins added to `sketches`"},
    {"in_flight", (PyCFunction)Machine_in_flight, METH_NOARGS, "in_flight() -> {(stream, group): (n, oldest t0)}"},
    {"stats", (PyCFunction)Machine_stats, METH_NOARGS, "stats() -> dict"},
    {"backfill_scan", (PyCFunction)Machine_backfill_scan, METH_VARARGS, "backfill_scan(body, stream) -> n"},
    {"backfill_finish", (PyCFunction)Machine_backfill_finish, METH_VARARGS, "backfill_finish(stream, groups) -> n"},
    {"dumps", (PyCFunction)Machine_dumps, METH_NOARGS, "dumps() -> bytes"},
    {"loads", (PyCFunction)Machine_loads, METH_O, "loads(bytes)"},
    {NULL, NULL, 0, NULL}};

static PyMethodDef module_methods[] = {
    {"body_keys", body_keys, METH_O, "body_keys(body) -> [(stream, message_id, kind)]"},
    {"body_groups", body_groups, METH_O, "body_groups(body) -> [(stream, group)] it announces (version 4)"},
    {NULL, NULL, 0, NULL}};

static int mod_traverse(PyObject *m, visitproc visit, void *arg) {
    ModState *st = PyModule_GetState(m);
    Py_VISIT(st->EngineError);
    Py_VISIT(st->BodyError);
    Py_VISIT(st->CheckpointError);
    Py_VISIT(st->BusyError);
    return 0;
}

static int mod_clear(PyObject *m) {
    ModState *st = PyModule_GetState(m);
    Py_CLEAR(st->EngineError);
    Py_CLEAR(st->BodyError);
    Py_CLEAR(st->CheckpointError);
    Py_CLEAR(st->BusyError);
    return 0;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_machine", "The reconcile engine's state machine (reconcile/machine/).",
    sizeof(ModState), module_methods, NULL, mod_traverse, mod_clear, NULL};

static PyTypeObject MachineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "msgtally.reconcile._machine.Machine",
    .tp_basicsize = sizeof(MachineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Machine_new,
    .tp_init = (initproc)Machine_init,
    .tp_dealloc = (destructor)Machine_dealloc,
    .tp_methods = Machine_methods,
    .tp_doc = "The per-id state machine of the reconcile engine (one thread at a time).",
};

static int add_int(PyObject *m, const char *name, long long v) {
    PyObject *o = PyLong_FromLongLong(v);
    if (!o) return -1;
    int rc = PyModule_AddObject(m, name, o);
    if (rc) Py_DECREF(o);
    return rc;
}

PyMODINIT_FUNC PyInit__machine(void) {
    if (PyType_Ready(&MachineType) < 0 || PyType_Ready(&SketchesType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    ModState *st = PyModule_GetState(m);
    st->EngineError = PyErr_NewExceptionWithDoc(
        "msgtally.reconcile._machine.EngineError", "The machine cannot do what was asked: the reason says why.",
        PyExc_ValueError, NULL);
    st->BodyError = st->EngineError ? PyErr_NewExceptionWithDoc(
        "msgtally.reconcile._machine.BodyError", "A log body the machine rejects: nothing of it was applied.",
        st->EngineError, NULL) : NULL;
    st->CheckpointError = st->EngineError ? PyErr_NewExceptionWithDoc(
        "msgtally.reconcile._machine.CheckpointError",
        "A checkpoint that does not load (section and field named): the machine is left empty.",
        st->EngineError, NULL) : NULL;
    st->BusyError = st->EngineError ? PyErr_NewExceptionWithDoc(
        "msgtally.reconcile._machine.BusyError", "A call on a machine another thread is calling.",
        st->EngineError, NULL) : NULL;
    if (!st->BusyError) { Py_DECREF(m); return NULL; }
    the_state = st;
    Py_INCREF(&MachineType);
    Py_INCREF(&SketchesType);
    Py_INCREF(st->EngineError);
    Py_INCREF(st->BodyError);
    Py_INCREF(st->CheckpointError);
    Py_INCREF(st->BusyError);
    if (PyModule_AddObject(m, "Machine", (PyObject *)&MachineType) ||
        PyModule_AddObject(m, "Sketches", (PyObject *)&SketchesType) ||
        PyModule_AddObject(m, "EngineError", st->EngineError) || PyModule_AddObject(m, "BodyError", st->BodyError) ||
        PyModule_AddObject(m, "CheckpointError", st->CheckpointError) ||
        PyModule_AddObject(m, "BusyError", st->BusyError)) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *names = PyTuple_New(MC_N_TALLY);
    if (!names) { Py_DECREF(m); return NULL; }
    for (int k = 0; k < MC_N_TALLY; k++) {
        if (!tally_keys[k] && !(tally_keys[k] = PyUnicode_InternFromString(MC_TALLY_NAMES[k]))) {
            Py_DECREF(names);
            Py_DECREF(m);
            return NULL;
        }
        Py_INCREF(tally_keys[k]);
        PyTuple_SET_ITEM(names, k, tally_keys[k]);
    }
    PyObject *fields = PyTuple_New(N_FIELDS);
    if (!fields) { Py_DECREF(names); Py_DECREF(m); return NULL; }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *name = PyUnicode_FromString(LB_FIELD_NAMES[f]);
        if (!name) { Py_DECREF(names); Py_DECREF(fields); Py_DECREF(m); return NULL; }
        PyTuple_SET_ITEM(fields, f, name);
    }
    if (PyModule_AddObject(m, "RECORD_FIELDS", fields)) { Py_DECREF(fields); Py_DECREF(names); Py_DECREF(m); return NULL; }
    if (PyModule_AddObject(m, "TALLY_FIELDS", names) || add_int(m, "SKETCH_OFFSET", MC_SKETCH_OFFSET) ||
        add_int(m, "MAX_GROUPS", MC_MAX_GROUPS) || add_int(m, "MAX_GROUPS_PER_STREAM", MC_MAX_GROUPS_PER_STREAM) ||
        add_int(m, "MAX_TEXT_BYTES", MC_MAX_TEXT_BYTES) || add_int(m, "MAX_IDS", MC_MAX_IDS) ||
        add_int(m, "MAX_NAMES", MC_MAX_NAMES) || add_int(m, "MAX_KNOWN", MC_MAX_KNOWN) ||
        add_int(m, "MAX_SEQUENCES", MC_MAX_SEQUENCES) || add_int(m, "MAX_BUCKETS", MC_MAX_BUCKETS) ||
        PyModule_AddObject(m, "SKETCH_GAMMA", PyFloat_FromDouble(MC_SKETCH_GAMMA))) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *classes = PyTuple_New(MC_N_ERROR);
    if (!classes) { Py_DECREF(m); return NULL; }
    for (int k = 0; k < MC_N_ERROR; k++) {
        PyObject *name = PyUnicode_FromString(MC_ERROR_NAMES[k]);
        if (!name) { Py_DECREF(classes); Py_DECREF(m); return NULL; }
        PyTuple_SET_ITEM(classes, k, name);
    }
    if (PyModule_AddObject(m, "ERROR_CLASSES", classes)) { Py_DECREF(classes); Py_DECREF(m); return NULL; }
    return m;
}
