/*-------------------------------------------------------------------------
 *
 * dlq.c
 *	  Module load of the dlq extension: defines the GUCs and, when the
 *	  library is preloaded, hooks shared memory and the background worker.
 *
 *	  Where to find a SQL function: its C code is in the file named after
 *	  its concern (dlq_store in store.c, dlq_list in list.c, ...); see dlq.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "dlq.h"
#include "shmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	dlq_define_gucs();
	dlq_define_worker_gucs();
	dlq_counts_init();

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("dlq");
#else
	EmitWarningsOnPlaceholders("dlq");
#endif

	/* Without preloading every SQL function works; only the worker is absent. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	dlq_shmem_request();

	/* pg_upgrade's server must not run maintenance on the databases it moves. */
	if (!IsBinaryUpgrade)
		dlq_register_launcher();
}
