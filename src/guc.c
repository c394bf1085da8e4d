/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The dlq.* configuration parameters.  Every one is SHOW-able and
 *	  documented in README.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "dlq.h"

int			dlq_max_payload_bytes = 1024 * 1024;
int			dlq_max_ids_per_call = 10000;

void
dlq_define_gucs(void)
{
	DefineCustomIntVariable("dlq.max_payload_bytes",
							"Largest payload, and largest error text, dlq_store accepts.",
							"Larger ones are refused with SQLSTATE 54000.",
							&dlq_max_payload_bytes,
							1024 * 1024, 1024, 256 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("dlq.max_ids_per_call",
							"Most message ids one call of dlq_reprocess, dlq_discard, dlq_resolve or dlq_ack accepts.",
							"Use the _all forms for more.",
							&dlq_max_ids_per_call,
							10000, 1, 1000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
}
