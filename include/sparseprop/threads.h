/* threads.h - OpenMP queries that also compile (as one thread) without it. */
#ifndef SPARSEPROP_THREADS_H
#define SPARSEPROP_THREADS_H

#ifdef _OPENMP
#include <omp.h>
#define SP_OPENMP 1
static inline int sp_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int sp_omp_team_size(void) { return omp_get_num_threads(); }
#else
#define SP_OPENMP 0
static inline int sp_omp_max_threads(void) { return 1; }
static inline int sp_omp_team_size(void) { return 1; }
#endif

#endif /* SPARSEPROP_THREADS_H */
