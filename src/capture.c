/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The dlq_capture trigger and re-applying captured rows to their table.
 *
 *	  Placeholder until the capture issue lands: re-apply reports
 *	  "not supported" so that replay.c can be built against capture.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "capture.h"

void
dlq_reapply_row(Oid target, Jsonb *payload, const char *operation,
				DlqReapplyResult *result)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("replay into a table is not supported yet")));
}
