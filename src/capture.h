/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  The capture module's interface to replay: re-applying one captured
 *	  row to its table (reapply.c).  What the module's own files share is
 *	  in capture_int.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_CAPTURE_H
#define DLQ_CAPTURE_H

#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

typedef struct DlqReapplyResult
{
	bool		ok;				/* the row is in the table now */
	char		sqlstate[6];	/* on failure: the error's SQLSTATE */
	char	   *error;			/* on failure: its message */
	Jsonb	   *error_detail;	/* on failure: detail, constraint, ...; or NULL */
} DlqReapplyResult;

/*
 * Re-apply a captured row (its payload and operation) to target, authorised
 * by the current user (replay.c switches back to the caller before calling
 * this) and inserted as the table's owner in a security-restricted
 * operation.  A row that would still violate a constraint is reported in
 * *result without raising an error, and needs no subtransaction; any other
 * error raises (a trigger's, a value that no longer converts, an exclusion
 * constraint), which replay.c catches per row in the runs of handler.c.
 * A missing privilege, or row-level security binding the current user on
 * target, raises 42501, which fails the whole replay.
 */
extern void dlq_reapply_row(Oid target, Jsonb *payload, const char *operation,
							DlqReapplyResult *result);

/*
 * error_detail of a row whose re-apply raised edata: {detail, schema,
 * table, column, constraint, datatype}, like a row isolate mode diverts.
 */
extern Jsonb *dlq_reapply_error_detail(const ErrorData *edata);

/*
 * Check a new payload for a row captured from rel (dlq_edit): a JSON
 * object whose keys are columns of rel and whose values convert into them,
 * converted as the table's owner the way a replay does.  Raises 22023 for
 * a key that is not a column, and the conversion's own error otherwise.
 */
extern void dlq_reapply_check_payload(Relation rel, Jsonb *payload);

#endif							/* DLQ_CAPTURE_H */
