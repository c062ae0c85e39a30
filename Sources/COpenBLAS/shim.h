#include <cblas.h>
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
// LAPACK (shipped inside Debian's libopenblas), Fortran ABI: arguments by pointer, column-major
// matrices, and the hidden length of each CHARACTER argument last (gfortran's convention; passing
// it is always safe). Used by LMQuant's GPTQ for the Cholesky factor of the Hessian and its inverse.
#include <stddef.h>
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
