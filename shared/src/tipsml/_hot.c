/* tipsml._hot: what the scorer does per decision and Python does slowly, in C (issue 12).
 *
 * Optional (tipsml.hot): built by shared/setup.py where a C compiler is present; every
 * user keeps its Python path, taken where it is not built or with TIPSML_NO_C=1, and
 * the tests hold the two to each other (shared/tests/test_hot.py).
 *
 * arm_stats(rows, x, lam, want_ux, prior=None, plam=0.0) -> (means, uxs | None)
 *     One policy's arms: rows[k] is arm k's stored model (layout 2: float32
 *     [n, Σr, b(D), triu(A⁻¹)]; layout 1: float64 [n, Σr, b(D), A⁻¹(D·D)]; anything
 *     else, None included: the prior, b = 0, A⁻¹ = I/lam). As Policy._rows reads them:
 *     when any row is layout 2, every row is read in float32 (a layout-1 row and the
 *     prior rounded to float32). means[k] = bᵀA⁻¹x (b += plam·prior[k] when a prior
 *     (K·D float64) is given), uxs[k] = xᵀA⁻¹x. The numpy path's numbers to the last bits
 *     of a sum taken in another order (1e-12 relative).
 * thompson_probs(mean, sd, breaks, nodes, weights) -> list
 *     P(arm a has the largest draw) for independent N(mean_a, sd_a²): the composite
 *     Gauss–Legendre rule of bandits.thompson_probs, step for step.
 * pick(kind, mean, ux, param, capsule) -> (idx, propensity, explored, scores | None)
 *     Policy.pick for ε-greedy and LinUCB: its float operations, its ties (within TIE_TOL
 *     of the best; the module's TIE_TOL, which tipsml.bandits checks is its own), and
 *     numpy's own draws (Generator.random, Generator.integers) from the generator's bit
 *     generator.
 * round6(x) -> list: x.round(6).tolist().
 * nats_frames(buf, pos) -> (frames, pos): the complete NATS frames of a read buffer.
 * resp_pack(*args) -> bytes: one Redis command in RESP (tipsml.resp.pack).
 *
 * No numpy C API: arguments are Python lists, bytes and objects with the buffer protocol;
 * numpy's bit generator is reached through its public capsule (numpy/random/bitgen.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

/* arms whose values are within TIE_TOL of the best are tied (tipsml.bandits.TIE_TOL) */
#define TIE_TOL 1e-6
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEADER 2
#define MAXD 32

static Py_ssize_t tri_len(Py_ssize_t d) { return HEADER + d + d * (d + 1) / 2; }
static Py_ssize_t full_len(Py_ssize_t d) { return HEADER + d + d * d; }

static int is_f64(const Py_buffer *v)
{
    const char *f = v->format;
    return v->itemsize == 8 && v->len % 8 == 0 &&
           (f == NULL || strcmp(f, "d") == 0 || strcmp(f, "<d") == 0 || strcmp(f, "=d") == 0);
}

/* float64 values from an object with the buffer protocol: exactly n of them (n >= 0),
   or at least one (n < 0) */
static int get_doubles(PyObject *o, Py_ssize_t n, Py_buffer *view, const char *what)
{
    if (PyObject_GetBuffer(o, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (!is_f64(view) || (n >= 0 && view->len != n * 8) || (n < 0 && view->len < 8)) {
        if (n >= 0)
            PyErr_Format(PyExc_ValueError, "%s: expected %zd float64 values", what, n);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected float64 values", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *arm_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 4 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError,
                        "arm_stats(rows, x, lam, want_ux, prior=None, plam=0.0)");
        return NULL;
    }
    PyObject *rows = args[0];
    if (!PyList_Check(rows)) {
        PyErr_SetString(PyExc_TypeError, "rows must be a list");
        return NULL;
    }
    double lam = PyFloat_AsDouble(args[2]);
    if (lam == -1.0 && PyErr_Occurred())
        return NULL;
    int want_ux = PyObject_IsTrue(args[3]);
    if (want_ux < 0)
        return NULL;
    PyObject *prior_o = nargs > 4 ? args[4] : Py_None;
    double plam = 0.0;
    if (nargs > 5) {
        plam = PyFloat_AsDouble(args[5]);
        if (plam == -1.0 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer xv;
    if (get_doubles(args[1], -1, &xv, "x") < 0)
        return NULL;
    Py_ssize_t d = xv.len / 8;
    if (d > MAXD) {
        PyBuffer_Release(&xv);
        PyErr_Format(PyExc_ValueError, "x: 1 to %d float64 values", MAXD);
        return NULL;
    }
    const double *x = (const double *)xv.buf;
    Py_ssize_t k = PyList_GET_SIZE(rows);
    Py_buffer pv;
    const double *prior = NULL;
    if (prior_o != Py_None) {
        if (get_doubles(prior_o, k * d, &pv, "prior") < 0) {
            PyBuffer_Release(&xv);
            return NULL;
        }
        prior = (const double *)pv.buf;
    }
    Py_ssize_t n2 = tri_len(d) * 4, n1 = full_len(d) * 8;
    int stored = 0;
    for (Py_ssize_t a = 0; a < k; a++) {
        PyObject *r = PyList_GET_ITEM(rows, a);
        if (PyBytes_Check(r) && PyBytes_GET_SIZE(r) == n2) {
            stored = 1;
            break;
        }
    }
    PyObject *means = PyList_New(k);
    PyObject *uxs = want_ux ? PyList_New(k) : (Py_INCREF(Py_None), Py_None);
    if (means == NULL || uxs == NULL)
        goto fail;
    double A[MAXD * MAXD], b[MAXD], u[MAXD];
    for (Py_ssize_t a = 0; a < k; a++) {
        PyObject *r = PyList_GET_ITEM(rows, a);
        Py_ssize_t len = -1;
        if (PyBytes_Check(r))
            len = PyBytes_GET_SIZE(r);
        else if (r != Py_None) {
            PyErr_SetString(PyExc_TypeError, "rows: bytes or None");
            goto fail;
        }
        if (len == n2) {  /* layout 2: float32, upper triangle of A⁻¹ */
            const float *t = (const float *)PyBytes_AS_STRING(r);
            for (Py_ssize_t i = 0; i < d; i++)
                b[i] = (double)t[HEADER + i];
            const float *tri = t + HEADER + d;
            for (Py_ssize_t i = 0, p = 0; i < d; i++)
                for (Py_ssize_t j = i; j < d; j++, p++)
                    A[i * d + j] = A[j * d + i] = (double)tri[p];
        } else if (len == n1) {  /* layout 1: float64, full A⁻¹ */
            double v[HEADER + MAXD + MAXD * MAXD];
            memcpy(v, PyBytes_AS_STRING(r), (size_t)n1);
            for (Py_ssize_t i = 0; i < d; i++)
                b[i] = stored ? (double)(float)v[HEADER + i] : v[HEADER + i];
            for (Py_ssize_t i = 0; i < d * d; i++) {
                /* as encode_arm stores it: the upper triangle, mirrored */
                Py_ssize_t ii = i / d, jj = i % d;
                double e = ii <= jj ? v[HEADER + d + i] : v[HEADER + d + jj * d + ii];
                A[i] = stored ? (double)(float)e : v[HEADER + d + i];
            }
        } else {  /* never updated (or another dimension): the prior */
            double diag = 1.0 / lam;
            if (stored)
                diag = (double)(float)diag;
            memset(A, 0, sizeof(double) * (size_t)(d * d));
            for (Py_ssize_t i = 0; i < d; i++) {
                A[i * d + i] = diag;
                b[i] = 0.0;
            }
        }
        if (prior != NULL)
            for (Py_ssize_t i = 0; i < d; i++)
                b[i] = b[i] + plam * prior[a * d + i];
        for (Py_ssize_t i = 0; i < d; i++) {  /* u = A⁻¹x, row by row */
            double s = 0.0;
            const double *row = A + i * d;
            for (Py_ssize_t j = 0; j < d; j++)
                s += row[j] * x[j];
            u[i] = s;
        }
        double m = 0.0, w = 0.0;
        for (Py_ssize_t i = 0; i < d; i++) {
            m += u[i] * b[i];
            w += u[i] * x[i];
        }
        PyObject *f = PyFloat_FromDouble(m);
        if (f == NULL)
            goto fail;
        PyList_SET_ITEM(means, a, f);
        if (want_ux) {
            f = PyFloat_FromDouble(w);
            if (f == NULL)
                goto fail;
            PyList_SET_ITEM(uxs, a, f);
        }
    }
    PyBuffer_Release(&xv);
    if (prior != NULL)
        PyBuffer_Release(&pv);
    PyObject *out = PyTuple_Pack(2, means, uxs);
    Py_DECREF(means);
    Py_DECREF(uxs);
    return out;
fail:
    Py_XDECREF(means);
    Py_XDECREF(uxs);
    PyBuffer_Release(&xv);
    if (prior != NULL)
        PyBuffer_Release(&pv);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Φ by Abramowitz & Stegun 26.2.17, as bandits._pdf_cdf */
static const double AS_P = 0.2316419;
static const double AS_B[5] = {0.319381530, -0.356563782, 1.781477937, -1.821255978,
                               1.330274429};

static PyObject *thompson_probs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "thompson_probs(mean, sd, breaks, nodes, weights)");
        return NULL;
    }
    Py_buffer mv, sv, bv, gv, wv;
    int got = 0;
    PyObject *out = NULL;
    double *work = NULL;
    if (get_doubles(args[0], -1, &mv, "mean") < 0)
        return NULL;
    got = 1;
    Py_ssize_t k = mv.len / 8;
    if (get_doubles(args[1], k, &sv, "sd") < 0)
        goto done;
    got = 2;
    if (get_doubles(args[2], -1, &bv, "breaks") < 0)
        goto done;
    got = 3;
    if (get_doubles(args[3], -1, &gv, "nodes") < 0)
        goto done;
    got = 4;
    if (get_doubles(args[4], gv.len / 8, &wv, "weights") < 0)
        goto done;
    got = 5;
    const double *mean = (const double *)mv.buf, *sd_in = (const double *)sv.buf;
    const double *brk = (const double *)bv.buf, *g = (const double *)gv.buf;
    const double *w = (const double *)wv.buf;
    Py_ssize_t nb = bv.len / 8, ng = gv.len / 8;
    if (k == 1) {
        out = PyList_New(1);
        if (out != NULL)
            PyList_SET_ITEM(out, 0, PyFloat_FromDouble(1.0));
        goto done;
    }
    /* sd floored; breakpoints μ_a + σ_a·B_j of every arm, sorted, those below
       max_a(μ_a − B_last·σ_a) dropped */
    Py_ssize_t nbr = k * nb;
    Py_ssize_t npts = (nbr - 1) * ng;
    work = PyMem_Malloc(sizeof(double) * (size_t)(k + nbr + 2 * npts + 4 * k));
    if (work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    double *sd = work, *br = sd + k, *xs = br + nbr, *wx = xs + npts;
    double *cdf = wx + npts, *pdf = cdf + k, *pre = pdf + k, *p = pre + k;
    double lo = -INFINITY;
    for (Py_ssize_t a = 0; a < k; a++) {
        sd[a] = sd_in[a] > 1e-12 ? sd_in[a] : 1e-12;
        if (isnan(sd_in[a]))
            sd[a] = sd_in[a];
        for (Py_ssize_t j = 0; j < nb; j++)
            br[a * nb + j] = mean[a] + sd[a] * brk[j];
        double l = mean[a] - brk[nb - 1] * sd[a];
        if (a == 0 || l > lo)
            lo = l;
    }
    qsort(br, (size_t)nbr, sizeof(double), cmp_double);
    Py_ssize_t first = 0;
    while (first < nbr && !(br[first] >= lo))
        first++;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = first; i + 1 < nbr; i++) {
        double half = 0.5 * (br[i + 1] - br[i]);
        double mid = br[i] + half;
        for (Py_ssize_t j = 0; j < ng; j++, n++) {
            xs[n] = mid + half * g[j];
            wx[n] = half * w[j];
        }
    }
    const double inv_sqrt_2pi = 1.0 / sqrt(2.0 * M_PI);
    for (Py_ssize_t a = 0; a < k; a++)
        p[a] = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        for (Py_ssize_t a = 0; a < k; a++) {
            double z = (xs[i] - mean[a]) / sd[a];
            double f = exp(-0.5 * z * z) * inv_sqrt_2pi;
            double t = 1.0 / (1.0 + AS_P * fabs(z));
            double poly = AS_B[4];
            for (int c = 3; c >= 0; c--)
                poly = AS_B[c] + t * poly;
            double q = f * (t * poly);
            cdf[a] = z >= 0.0 ? 1.0 - q : q;
            pdf[a] = f / sd[a];
        }
        /* leave-one-out products Π_{b≠a} Φ_b: prefix products, then a suffix pass */
        double acc = 1.0;
        for (Py_ssize_t a = 0; a < k; a++) {
            pre[a] = acc;  /* Π_{b<a} */
            acc *= cdf[a];
        }
        double suf = 1.0;
        for (Py_ssize_t a = k - 1; a >= 0; a--) {
            double loo;
            if (a == 0)
                loo = suf;
            else if (a == k - 1)
                loo = pre[a];
            else
                loo = pre[a] * suf;
            p[a] += wx[i] * (pdf[a] * loo);
            suf *= cdf[a];
        }
    }
    double s = 0.0;
    for (Py_ssize_t a = 0; a < k; a++) {
        if (!(p[a] >= 0.0))
            p[a] = isnan(p[a]) ? p[a] : 0.0;
        s += p[a];
    }
    out = PyList_New(k);
    if (out == NULL)
        goto done;
    for (Py_ssize_t a = 0; a < k; a++) {
        double v = s > 0 ? p[a] / s : 1.0 / (double)k;
        PyObject *f = PyFloat_FromDouble(v);
        if (f == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, a, f);
    }
done:
    PyMem_Free(work);
    if (got >= 5) PyBuffer_Release(&wv);
    if (got >= 4) PyBuffer_Release(&gv);
    if (got >= 3) PyBuffer_Release(&bv);
    if (got >= 2) PyBuffer_Release(&sv);
    if (got >= 1) PyBuffer_Release(&mv);
    return out;
}

/* ------------------------------------------------------------------ choices
 * numpy's bit generator interface (numpy/random/bitgen.h, a public C API: the layout of
 * the struct behind ``Generator.bit_generator.capsule``), declared here so that building
 * this file needs no numpy headers. */
typedef struct {
    void *state;
    uint64_t (*next_uint64)(void *st);
    uint32_t (*next_uint32)(void *st);
    double (*next_double)(void *st);
    uint64_t (*next_raw)(void *st);
} bitgen_t;

static bitgen_t *get_bitgen(PyObject *capsule)
{
    return (bitgen_t *)PyCapsule_GetPointer(capsule, "BitGenerator");
}

/* Generator.integers(n), 1 <= n < 2³²: Lemire's nearly-divisionless bounded draw on the
   generator's 32-bit stream, the draw numpy makes (none for a range of one). Whether it
   is still numpy's is checked when tipsml.bandits is imported (bandits._hot_pick_agrees). */
static uint32_t draw_below(bitgen_t *bg, uint32_t n)
{
    if (n <= 1)
        return 0;
    uint64_t m = (uint64_t)bg->next_uint32(bg->state) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t reject = (uint32_t)(0u - n) % n;  /* 2³² mod n */
        while (low < reject) {
            m = (uint64_t)bg->next_uint32(bg->state) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

static PyObject *py_draw_below(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "draw_below(capsule, n)");
        return NULL;
    }
    bitgen_t *bg = get_bitgen(args[0]);
    if (bg == NULL)
        return NULL;
    unsigned long n = PyLong_AsUnsignedLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "n: 1 to 2**32 - 1");
        return NULL;
    }
    return PyLong_FromUnsignedLong(draw_below(bg, (uint32_t)n));
}

static PyObject *py_draw_double(PyObject *self, PyObject *capsule)
{
    bitgen_t *bg = get_bitgen(capsule);
    return bg == NULL ? NULL : PyFloat_FromDouble(bg->next_double(bg->state));
}

/* Python's max() of doubles: the first, replaced by any later one that is greater */
static double py_max(const double *v, Py_ssize_t n)
{
    double mx = v[0];
    for (Py_ssize_t i = 1; i < n; i++)
        if (v[i] > mx)
            mx = v[i];
    return mx;
}

static int list_doubles(PyObject *o, double *out, Py_ssize_t n, const char *what)
{
    if (!PyList_Check(o) || PyList_GET_SIZE(o) != n) {
        PyErr_Format(PyExc_TypeError, "%s: a list of %zd floats", what, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyFloat_AsDouble(PyList_GET_ITEM(o, i));
        if (out[i] == -1.0 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

#define MAXK 256

/* pick(kind, mean, ux, param, capsule) -> (idx, propensity, explored, scores | None)
 *   kind 0: ε-greedy (param ε; scores are the means: None), kind 1: LinUCB (param α;
 *   scores θ·x + α√max(xᵀA⁻¹x, 0)). Policy.pick's floating-point operations in its order,
 *   and the same draws from the generator in the same order. */
static PyObject *pick(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "pick(kind, mean, ux, param, capsule)");
        return NULL;
    }
    long kind = PyLong_AsLong(args[0]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (!PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "mean: a list of floats");
        return NULL;
    }
    Py_ssize_t k = PyList_GET_SIZE(args[1]);
    if (k < 1 || k > MAXK) {
        PyErr_Format(PyExc_ValueError, "1 to %d arms", MAXK);
        return NULL;
    }
    double param = PyFloat_AsDouble(args[3]);
    if (param == -1.0 && PyErr_Occurred())
        return NULL;
    bitgen_t *bg = get_bitgen(args[4]);
    if (bg == NULL)
        return NULL;
    double mean[MAXK], sc[MAXK];
    Py_ssize_t top[MAXK], nt = 0, idx;
    if (list_doubles(args[1], mean, k, "mean") < 0)
        return NULL;
    double p;
    int explored;
    if (kind == 0) {
        double cut = py_max(mean, k) - TIE_TOL;
        for (Py_ssize_t i = 0; i < k; i++)
            if (mean[i] >= cut)
                top[nt++] = i;
        explored = bg->next_double(bg->state) < param;
        if (explored)
            idx = (Py_ssize_t)draw_below(bg, (uint32_t)k);
        else
            idx = nt == 1 ? top[0] : top[draw_below(bg, (uint32_t)nt)];
        int greedy = 0;
        for (Py_ssize_t i = 0; i < nt; i++)
            greedy |= top[i] == idx;
        p = param / (double)k + (greedy ? (1.0 - param) / (double)nt : 0.0);
        return Py_BuildValue("(ndOO)", idx, p, explored ? Py_True : Py_False, Py_None);
    }
    if (kind != 1) {
        PyErr_SetString(PyExc_ValueError, "kind: 0 (egreedy) or 1 (linucb)");
        return NULL;
    }
    if (list_doubles(args[2], sc, k, "ux") < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        double w = 0.0 > sc[i] ? 0.0 : sc[i];  /* Python's max(w, 0.0) */
        sc[i] = mean[i] + param * sqrt(w);
    }
    double cut = py_max(sc, k) - TIE_TOL;
    for (Py_ssize_t i = 0; i < k; i++)
        if (sc[i] >= cut)
            top[nt++] = i;
    idx = nt == 1 ? top[0] : top[draw_below(bg, (uint32_t)nt)];
    p = 1.0 / (double)nt;
    explored = mean[idx] < py_max(mean, k) - TIE_TOL;
    PyObject *scores = PyList_New(k);
    if (scores == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *f = PyFloat_FromDouble(sc[i]);
        if (f == NULL) {
            Py_DECREF(scores);
            return NULL;
        }
        PyList_SET_ITEM(scores, i, f);
    }
    return Py_BuildValue("(ndON)", idx, p, explored ? Py_True : Py_False, scores);
}

/* round6(x) -> list: x.round(6).tolist() (numpy's rounding: rint(x·10⁶)/10⁶) */
static PyObject *round6(PyObject *self, PyObject *x)
{
    Py_buffer v;
    if (get_doubles(x, -1, &v, "x") < 0)
        return NULL;
    Py_ssize_t n = v.len / 8;
    const double *d = (const double *)v.buf;
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *f = PyFloat_FromDouble(rint(d[i] * 1e6) / 1e6);
        if (f == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, f);
    }
    PyBuffer_Release(&v);
    return out;
}

/* ------------------------------------------------------------------ NATS frames
 * nats_frames(buf, pos) -> (frames, pos): the complete frames of a NATS connection's read
 * buffer from ``pos`` on, and where the first incomplete one starts. A MSG or HMSG is a
 * tuple (sid, subject, reply, header block or None, payload): subject and reply as str
 * ("" when there is none), the header block as its bytes (``NATS/1.0…\r\n\r\n``), the
 * payload as bytes; any other line is its bytes without the CRLF (PING, +OK, INFO …).
 * A malformed MSG line raises ValueError (the connection starts again), as
 * tipsml.messaging.fastsub's Python parser does. */

static const char *find_crlf(const char *p, const char *end)
{
    while (p + 1 < end) {
        const char *cr = memchr(p, '\r', (size_t)(end - p - 1));
        if (cr == NULL)
            return NULL;
        if (cr[1] == '\n')
            return cr;
        p = cr + 1;
    }
    return NULL;
}

static int parse_size(const char *s, Py_ssize_t n, Py_ssize_t *out)
{
    if (n < 1 || n > 18)
        return -1;
    Py_ssize_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

static PyObject *nats_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "nats_frames(buf, pos)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        goto fail;
    const char *base = (const char *)v.buf, *end = base + v.len;
    if (pos < 0 || pos > v.len) {
        PyErr_SetString(PyExc_ValueError, "pos outside the buffer");
        goto fail;
    }
    while (pos < v.len) {
        const char *line = base + pos;
        const char *eol = find_crlf(line, end);
        if (eol == NULL)
            break;
        Py_ssize_t llen = eol - line;
        int hmsg = llen >= 5 && memcmp(line, "HMSG ", 5) == 0;
        int msg = !hmsg && llen >= 4 && memcmp(line, "MSG ", 4) == 0;
        PyObject *item;
        if (!msg && !hmsg) {
            item = PyBytes_FromStringAndSize(line, llen);
            pos = eol + 2 - base;
        } else {
            /* the line's tokens: MSG subject sid [reply] size | HMSG … hdr_len total_len */
            const char *tok[7];
            Py_ssize_t tlen[7];
            int nt = 0;
            for (const char *p = line; p < eol;) {
                while (p < eol && (*p == ' ' || *p == '\t'))
                    p++;
                if (p >= eol)
                    break;
                const char *q = p;
                while (q < eol && *q != ' ' && *q != '\t')
                    q++;
                if (nt == 7) {
                    nt = 8;
                    break;
                }
                tok[nt] = p;
                tlen[nt++] = q - p;
                p = q;
            }
            int want_min = hmsg ? 5 : 4;
            if (nt < want_min || nt > want_min + 1) {
                PyErr_SetString(PyExc_ValueError, "malformed MSG line");
                goto fail;
            }
            Py_ssize_t size, hlen = 0, sid;
            if (parse_size(tok[nt - 1], tlen[nt - 1], &size) < 0 ||
                (hmsg && parse_size(tok[nt - 2], tlen[nt - 2], &hlen) < 0) ||
                parse_size(tok[2], tlen[2], &sid) < 0 || hlen > size) {
                PyErr_SetString(PyExc_ValueError, "malformed MSG line");
                goto fail;
            }
            Py_ssize_t body = eol + 2 - base;
            if (body + size + 2 > v.len)
                break;  /* the payload is not all here yet */
            int has_reply = nt == want_min + 1;
            PyObject *subject = PyUnicode_DecodeUTF8(tok[1], tlen[1], "strict");
            PyObject *reply = has_reply ? PyUnicode_DecodeUTF8(tok[3], tlen[3], "strict")
                                        : PyUnicode_FromStringAndSize("", 0);
            PyObject *hdr = hmsg ? PyBytes_FromStringAndSize(base + body, hlen)
                                 : (Py_INCREF(Py_None), Py_None);
            PyObject *data = PyBytes_FromStringAndSize(base + body + hlen, size - hlen);
            PyObject *sidobj = PyLong_FromSsize_t(sid);
            if (subject == NULL || reply == NULL || hdr == NULL || data == NULL ||
                sidobj == NULL) {
                Py_XDECREF(subject);
                Py_XDECREF(reply);
                Py_XDECREF(hdr);
                Py_XDECREF(data);
                Py_XDECREF(sidobj);
                goto fail;
            }
            item = PyTuple_Pack(5, sidobj, subject, reply, hdr, data);
            Py_DECREF(sidobj);
            Py_DECREF(subject);
            Py_DECREF(reply);
            Py_DECREF(hdr);
            Py_DECREF(data);
            pos = body + size + 2;
        }
        if (item == NULL)
            goto fail;
        int rc = PyList_Append(frames, item);
        Py_DECREF(item);
        if (rc < 0)
            goto fail;
    }
    PyBuffer_Release(&v);
    PyObject *out = Py_BuildValue("(Nn)", frames, pos);
    return out;
fail:
    Py_XDECREF(frames);
    PyBuffer_Release(&v);
    return NULL;
}

/* ------------------------------------------------------------------ RESP
 * resp_pack(*args) -> bytes: one Redis command as RESP (an array of bulk strings), as
 * tipsml.resp.pack writes it: bytes as they are, str as UTF-8, an int or a float as its
 * repr. Anything else (an int or float subclass included) raises TypeError: the Python
 * packer then answers it (redis-py's DataError). */
/* "<lead><n>\r\n" at w (n >= 0); returns the end. By hand: sprintf took most of a
 * command's packing time (glibc's printf_positional, ~2,000 instructions a call). */
static char *put_len(char *w, char lead, Py_ssize_t n)
{
    char digits[24];
    int d = 0;
    *w++ = lead;
    do {
        digits[d++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (d > 0)
        *w++ = digits[--d];
    *w++ = '\r';
    *w++ = '\n';
    return w;
}

static Py_ssize_t len_digits(Py_ssize_t n)
{
    Py_ssize_t d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

static PyObject *resp_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *tmp[64];
    const char *ptr[64];
    Py_ssize_t len[64];
    if (nargs > 64) {
        PyErr_SetString(PyExc_TypeError, "more than 64 arguments");
        return NULL;
    }
    Py_ssize_t total = 3 + len_digits(nargs), i;
    PyObject *out = NULL;
    for (i = 0; i < nargs; i++) {
        PyObject *a = args[i];
        tmp[i] = NULL;
        if (PyBytes_CheckExact(a)) {
            ptr[i] = PyBytes_AS_STRING(a);
            len[i] = PyBytes_GET_SIZE(a);
        } else if (PyUnicode_CheckExact(a)) {
            ptr[i] = PyUnicode_AsUTF8AndSize(a, &len[i]);
            if (ptr[i] == NULL)
                goto done;
        } else if (PyLong_CheckExact(a) || PyFloat_CheckExact(a)) {
            tmp[i] = PyObject_Repr(a);
            if (tmp[i] == NULL)
                goto done;
            ptr[i] = PyUnicode_AsUTF8AndSize(tmp[i], &len[i]);
            if (ptr[i] == NULL)
                goto done;
        } else {
            PyErr_SetString(PyExc_TypeError, "bytes, str, int or float");
            goto done;
        }
        total += 5 + len_digits(len[i]) + len[i];  /* $<n>\r\n<data>\r\n */
    }
    /* the exact size: no resize (a realloc of every command over 512 bytes) */
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    char *w = put_len(PyBytes_AS_STRING(out), '*', nargs);
    for (Py_ssize_t j = 0; j < nargs; j++) {
        w = put_len(w, '$', len[j]);
        memcpy(w, ptr[j], (size_t)len[j]);
        w += len[j];
        *w++ = '\r';
        *w++ = '\n';
    }
    assert(w - PyBytes_AS_STRING(out) == total);
done:
    for (Py_ssize_t j = 0; j < i && j < nargs; j++)
        Py_XDECREF(tmp[j]);
    if (i < nargs)
        Py_XDECREF(tmp[i]);
    return out;
}

static PyMethodDef methods[] = {
    {"arm_stats", (PyCFunction)(void (*)(void))arm_stats, METH_FASTCALL,
     "arm_stats(rows, x, lam, want_ux, prior=None, plam=0.0) -> (means, uxs | None)"},
    {"thompson_probs", (PyCFunction)(void (*)(void))thompson_probs, METH_FASTCALL,
     "thompson_probs(mean, sd, breaks, nodes, weights) -> list of P(arm is the argmax)"},
    {"pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL,
     "pick(kind, mean, ux, param, capsule) -> (idx, propensity, explored, scores | None)"},
    {"draw_below", (PyCFunction)(void (*)(void))py_draw_below, METH_FASTCALL,
     "draw_below(capsule, n): Generator.integers(n) on the capsule's bit generator"},
    {"draw_double", (PyCFunction)py_draw_double, METH_O,
     "draw_double(capsule): Generator.random() on the capsule's bit generator"},
    {"round6", (PyCFunction)round6, METH_O, "round6(x): x.round(6).tolist()"},
    {"resp_pack", (PyCFunction)(void (*)(void))resp_pack, METH_FASTCALL,
     "resp_pack(*args) -> bytes: one Redis command in RESP"},
    {"nats_frames", (PyCFunction)(void (*)(void))nats_frames, METH_FASTCALL,
     "nats_frames(buf, pos) -> (frames, pos): the complete NATS frames of a read buffer"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tipsml._hot",
    "The scorer's per-arm maths in C (optional; tipsml.bandits falls back to numpy).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__hot(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObject(m, "TIE_TOL", PyFloat_FromDouble(TIE_TOL)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
