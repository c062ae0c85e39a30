#include <mpi.h>

/* Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, …) are macros over global objects, which
   Swift cannot import; these return them. */
static inline MPI_Comm lmk_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype lmk_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype lmk_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Op lmk_mpi_min(void) { return MPI_MIN; }
static inline int lmk_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int lmk_mpi_success(void) { return MPI_SUCCESS; }
