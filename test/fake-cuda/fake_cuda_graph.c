/* Graphs. Nodes are kept in insertion order and edges are only checked, not
 * stored: launching a graph runs its kernel nodes one after another on the
 * stream (recursing into child graphs), which is a valid topological order for
 * every graph a chain of captures or additions can build. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <stdlib.h>
#include <string.h>

#define GRAPH_MAGIC 0x6A6A6A6Au
#define NODE_MAGIC 0x0D0D0D0Du
#define EXEC_MAGIC 0xE0E0E0E0u

struct CUgraphNode_st {
    uint32_t magic;
    CUgraphNodeType type;
    CUfunction func;
    CUgraph child; /* owned clone, CU_GRAPH_NODE_TYPE_GRAPH only */
    CUgraph owner;
};

struct CUgraph_st {
    uint32_t magic;
    CUgraphNode *nodes;
    size_t n, cap;
};

/* An instantiated graph: its kernels flattened, plus a shape string (node types
 * in pre-order, child graphs bracketed) that cuGraphExecUpdate compares. */
struct CUgraphExec_st {
    uint32_t magic;
    CUfunction *kernels;
    size_t nkernels, capkernels;
    char *shape;
    size_t nshape, capshape;
};

static int graph_valid(CUgraph g) { return g && g->magic == GRAPH_MAGIC; }
static int node_valid(CUgraphNode n) { return n && n->magic == NODE_MAGIC; }

CUresult fake_graph_new(CUgraph *out)
{
    CUgraph g = calloc(1, sizeof *g);
    if (!g)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g->magic = GRAPH_MAGIC;
    *out = g;
    return CUDA_SUCCESS;
}

static void graph_free(CUgraph g)
{
    for (size_t i = 0; i < g->n; i++) {
        if (g->nodes[i]->child)
            graph_free(g->nodes[i]->child);
        g->nodes[i]->magic = 0;
        free(g->nodes[i]);
    }
    free(g->nodes);
    g->magic = 0;
    free(g);
}

static CUresult add_node(CUgraph g, const CUgraphNode *deps, size_t ndeps, CUgraphNodeType type, CUfunction f,
                         CUgraph child, CUgraphNode *out)
{
    if (!graph_valid(g) || (ndeps && !deps))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < ndeps; i++)
        if (!node_valid(deps[i]) || deps[i]->owner != g)
            return CUDA_ERROR_INVALID_VALUE;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 16;
        CUgraphNode *nn = realloc(g->nodes, cap * sizeof *nn);
        if (!nn)
            return CUDA_ERROR_OUT_OF_MEMORY;
        g->nodes = nn;
        g->cap = cap;
    }
    CUgraphNode n = calloc(1, sizeof *n);
    if (!n)
        return CUDA_ERROR_OUT_OF_MEMORY;
    n->magic = NODE_MAGIC;
    n->type = type;
    n->func = f;
    n->child = child;
    n->owner = g;
    g->nodes[g->n++] = n;
    if (out)
        *out = n;
    return CUDA_SUCCESS;
}

CUresult fake_graph_append_kernel(CUgraph g, CUfunction f, CUgraphNode *last)
{
    CUgraphNode dep = *last;
    return add_node(g, dep ? &dep : NULL, dep ? 1 : 0, CU_GRAPH_NODE_TYPE_KERNEL, f, NULL, last);
}

static CUresult graph_clone(CUgraph src, CUgraph *out)
{
    CUresult r = fake_graph_new(out);
    for (size_t i = 0; r == CUDA_SUCCESS && i < src->n; i++) {
        CUgraphNode n = src->nodes[i];
        CUgraph child = NULL;
        if (n->child && (r = graph_clone(n->child, &child)) != CUDA_SUCCESS)
            break;
        r = add_node(*out, NULL, 0, n->type, n->func, child, NULL);
    }
    return r;
}

CUresult cuGraphCreate(CUgraph *phGraph, unsigned int flags)
{
    FAKE_ENTER(cuGraphCreate);
    FAKE_REQUIRE_INIT();
    if (!phGraph || flags)
        return CUDA_ERROR_INVALID_VALUE;
    return fake_graph_new(phGraph);
}

void fake_graph_release(CUgraph g)
{
    if (graph_valid(g))
        graph_free(g);
}

CUresult cuGraphDestroy(CUgraph hGraph)
{
    FAKE_ENTER(cuGraphDestroy);
    FAKE_REQUIRE_INIT();
    if (!graph_valid(hGraph))
        return CUDA_ERROR_INVALID_VALUE;
    graph_free(hGraph);
    return CUDA_SUCCESS;
}

CUresult cuGraphAddKernelNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                              size_t numDependencies, const CUDA_KERNEL_NODE_PARAMS_v1 *nodeParams)
{
    FAKE_ENTER(cuGraphAddKernelNode);
    FAKE_REQUIRE_INIT();
    if (!phGraphNode || !nodeParams || !fake_function_valid(nodeParams->func))
        return CUDA_ERROR_INVALID_VALUE;
    return add_node(hGraph, dependencies, numDependencies, CU_GRAPH_NODE_TYPE_KERNEL, nodeParams->func, NULL,
                    phGraphNode);
}

CUresult cuGraphAddKernelNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                 size_t numDependencies, const CUDA_KERNEL_NODE_PARAMS *nodeParams)
{
    FAKE_ENTER(cuGraphAddKernelNode_v2);
    FAKE_REQUIRE_INIT();
    if (!phGraphNode || !nodeParams)
        return CUDA_ERROR_INVALID_VALUE;
    CUfunction f = nodeParams->func ? nodeParams->func : (CUfunction)nodeParams->kern;
    if (!fake_function_valid(f))
        return CUDA_ERROR_INVALID_VALUE;
    return add_node(hGraph, dependencies, numDependencies, CU_GRAPH_NODE_TYPE_KERNEL, f, NULL, phGraphNode);
}

CUresult cuGraphAddEmptyNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                             size_t numDependencies)
{
    FAKE_ENTER(cuGraphAddEmptyNode);
    FAKE_REQUIRE_INIT();
    if (!phGraphNode)
        return CUDA_ERROR_INVALID_VALUE;
    return add_node(hGraph, dependencies, numDependencies, CU_GRAPH_NODE_TYPE_EMPTY, NULL, NULL, phGraphNode);
}

CUresult cuGraphAddChildGraphNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                  size_t numDependencies, CUgraph childGraph)
{
    FAKE_ENTER(cuGraphAddChildGraphNode);
    FAKE_REQUIRE_INIT();
    if (!phGraphNode || !graph_valid(childGraph))
        return CUDA_ERROR_INVALID_VALUE;
    CUgraph clone; /* the driver embeds a copy: later edits of childGraph do not leak in */
    CUresult r = graph_clone(childGraph, &clone);
    if (r == CUDA_SUCCESS)
        r = add_node(hGraph, dependencies, numDependencies, CU_GRAPH_NODE_TYPE_GRAPH, NULL, clone, phGraphNode);
    return r;
}

CUresult cuGraphChildGraphNodeGetGraph(CUgraphNode hNode, CUgraph *phGraph)
{
    FAKE_ENTER(cuGraphChildGraphNodeGetGraph);
    FAKE_REQUIRE_INIT();
    if (!phGraph || !node_valid(hNode) || hNode->type != CU_GRAPH_NODE_TYPE_GRAPH)
        return CUDA_ERROR_INVALID_VALUE;
    *phGraph = hNode->child;
    return CUDA_SUCCESS;
}

CUresult cuGraphGetNodes(CUgraph hGraph, CUgraphNode *nodes, size_t *numNodes)
{
    FAKE_ENTER(cuGraphGetNodes);
    FAKE_REQUIRE_INIT();
    if (!graph_valid(hGraph) || !numNodes)
        return CUDA_ERROR_INVALID_VALUE;
    if (nodes) {
        size_t n = *numNodes < hGraph->n ? *numNodes : hGraph->n;
        memcpy(nodes, hGraph->nodes, n * sizeof *nodes);
        for (size_t i = n; i < *numNodes; i++)
            nodes[i] = NULL;
    }
    *numNodes = hGraph->n;
    return CUDA_SUCCESS;
}

CUresult cuGraphNodeGetType(CUgraphNode hNode, CUgraphNodeType *type)
{
    FAKE_ENTER(cuGraphNodeGetType);
    FAKE_REQUIRE_INIT();
    if (!type || !node_valid(hNode))
        return CUDA_ERROR_INVALID_VALUE;
    *type = hNode->type;
    return CUDA_SUCCESS;
}

/* ---- executable graphs ---- */

static int push_kernel(CUgraphExec e, CUfunction f)
{
    if (e->nkernels == e->capkernels) {
        size_t cap = e->capkernels ? 2 * e->capkernels : 16;
        CUfunction *nk = realloc(e->kernels, cap * sizeof *nk);
        if (!nk)
            return 0;
        e->kernels = nk;
        e->capkernels = cap;
    }
    e->kernels[e->nkernels++] = f;
    return 1;
}

static int push_shape(CUgraphExec e, char c)
{
    if (e->nshape == e->capshape) {
        size_t cap = e->capshape ? 2 * e->capshape : 32;
        char *ns = realloc(e->shape, cap);
        if (!ns)
            return 0;
        e->shape = ns;
        e->capshape = cap;
    }
    e->shape[e->nshape++] = c;
    return 1;
}

static int flatten(CUgraphExec e, CUgraph g)
{
    for (size_t i = 0; i < g->n; i++) {
        CUgraphNode n = g->nodes[i];
        if (!push_shape(e, (char)('a' + n->type)))
            return 0;
        if (n->type == CU_GRAPH_NODE_TYPE_KERNEL && !push_kernel(e, n->func))
            return 0;
        if (n->child && (!push_shape(e, '(') || !flatten(e, n->child) || !push_shape(e, ')')))
            return 0;
    }
    return 1;
}

static void exec_free(CUgraphExec e)
{
    free(e->kernels);
    free(e->shape);
    e->magic = 0;
    free(e);
}

static CUresult instantiate(CUgraphExec *out, CUgraph g)
{
    FAKE_REQUIRE_INIT();
    if (!out || !graph_valid(g))
        return CUDA_ERROR_INVALID_VALUE;
    CUgraphExec e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->magic = EXEC_MAGIC;
    if (!flatten(e, g)) {
        exec_free(e);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = e;
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode, char *logBuffer,
                            size_t bufferSize)
{
    FAKE_ENTER(cuGraphInstantiate);
    (void)phErrorNode;
    if (logBuffer && bufferSize)
        logBuffer[0] = '\0';
    return instantiate(phGraphExec, hGraph);
}

CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                               char *logBuffer, size_t bufferSize)
{
    FAKE_ENTER(cuGraphInstantiate_v2);
    (void)phErrorNode;
    if (logBuffer && bufferSize)
        logBuffer[0] = '\0';
    return instantiate(phGraphExec, hGraph);
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags)
{
    FAKE_ENTER(cuGraphInstantiateWithFlags);
    (void)flags;
    return instantiate(phGraphExec, hGraph);
}

static CUresult instantiate_params(CUgraphExec *out, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    CUresult r = instantiate(out, g);
    if (p) {
        p->result_out = r == CUDA_SUCCESS ? CUDA_GRAPH_INSTANTIATE_SUCCESS : CUDA_GRAPH_INSTANTIATE_ERROR;
        p->hErrNode_out = NULL;
    }
    return r;
}

CUresult cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                      CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams)
{
    FAKE_ENTER(cuGraphInstantiateWithParams);
    return instantiate_params(phGraphExec, hGraph, instantiateParams);
}

CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *phGraphExec, CUgraph hGraph,
                                           CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams)
{
    FAKE_ENTER(cuGraphInstantiateWithParams_ptsz);
    return instantiate_params(phGraphExec, hGraph, instantiateParams);
}

CUresult cuGraphExecDestroy(CUgraphExec hGraphExec)
{
    FAKE_ENTER(cuGraphExecDestroy);
    FAKE_REQUIRE_INIT();
    if (!hGraphExec || hGraphExec->magic != EXEC_MAGIC)
        return CUDA_ERROR_INVALID_VALUE;
    exec_free(hGraphExec);
    return CUDA_SUCCESS;
}

CUresult cuGraphExecUpdate_v2(CUgraphExec hGraphExec, CUgraph hGraph, CUgraphExecUpdateResultInfo *resultInfo)
{
    FAKE_ENTER(cuGraphExecUpdate_v2);
    FAKE_REQUIRE_INIT();
    if (!hGraphExec || hGraphExec->magic != EXEC_MAGIC || !graph_valid(hGraph) || !resultInfo)
        return CUDA_ERROR_INVALID_VALUE;
    CUgraphExec fresh;
    CUresult r = instantiate(&fresh, hGraph);
    if (r)
        return r;
    memset(resultInfo, 0, sizeof *resultInfo);
    int same = fresh->nshape == hGraphExec->nshape && memcmp(fresh->shape, hGraphExec->shape, fresh->nshape) == 0;
    if (same) { /* same topology: take the new kernel handles */
        CUfunction *k = hGraphExec->kernels;
        hGraphExec->kernels = fresh->kernels;
        fresh->kernels = k;
        resultInfo->result = CU_GRAPH_EXEC_UPDATE_SUCCESS;
    } else {
        resultInfo->result = CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED;
    }
    exec_free(fresh);
    return same ? CUDA_SUCCESS : CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE;
}

static CUresult graph_launch(CUgraphExec e, CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!e || e->magic != EXEC_MAGIC)
        return CUDA_ERROR_INVALID_VALUE;
    if ((r = fake_capture_check(s)))
        return r;
    for (size_t i = 0; i < e->nkernels; i++) {
        fake_op_t *op = fake_op_new(OP_KERNEL);
        if (!op)
            return CUDA_ERROR_OUT_OF_MEMORY;
        fake_stream_enqueue(s, op);
    }
    return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    FAKE_ENTER(cuGraphLaunch);
    return graph_launch(hGraphExec, hStream);
}

CUresult cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
{
    FAKE_ENTER(cuGraphLaunch_ptsz);
    return graph_launch(hGraphExec, hStream);
}
