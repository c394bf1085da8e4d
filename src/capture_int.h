/*-------------------------------------------------------------------------
 *
 * capture_int.h
 *	  What the three files of the capture module share, and nobody else
 *	  includes:
 *
 *	  capture.c			the dlq_capture and dlq_capture_isolate triggers,
 *						buffering diverted rows and storing them in batches
 *	  capture_predict.c	the per-relation cache of constraints and foreign
 *						keys, and predicting whether a row would violate one
 *	  reapply.c			re-applying a stored row to its table
 *						(dlq_reapply_row, declared in capture.h)
 *
 *	  Calls run one way: capture.c and reapply.c use capture_predict.c, and
 *	  capture.c asks reapply.c whether the row it sees is being replayed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_CAPTURE_INT_H
#define DLQ_CAPTURE_INT_H

#include "executor/spi.h"
#include "nodes/execnodes.h"
#include "utils/jsonb.h"
#include "storage/proc.h"
#include "utils/relcache.h"

/* This backend's current local transaction id, for per-transaction state. */
#if PG_VERSION_NUM >= 170000
#define DLQ_LXID (MyProc->vxid.lxid)
#else
#define DLQ_LXID (MyProc->lxid)
#endif

/* One foreign key of a relation, with its probe (capture_predict.c). */
typedef struct CaptureFk CaptureFk;

/*
 * Per-relation cache entry (capture_predict.c), dropped when the relation
 * or a table one of its foreign keys references changes.
 */
typedef struct CaptureRel
{
	Oid			relid;			/* hash key */
	bool		valid;			/* metadata still matches the catalogs */
	MemoryContext cxt;			/* metadata, child of CacheMemoryContext */

	/* metadata */
	int			nnotnull;
	AttrNumber *notnull;
	int			ncheck;
	char	  **checkname;
	Expr	  **checkexpr;		/* planned, in cxt */
	int			nunique;
	Oid		   *uniqueoids;
	int			nfk;
	CaptureFk  *fks;
	bool		partitioned;

	/* reapply.c: conversion and insert plans, prepared on first use */
	SPIPlanPtr	convert_plan;
	SPIPlanPtr	insert_plan;
	int			ninsert;
	AttrNumber *insertattnums;
	bool		fast_convert;	/* scalar columns only: convert in C */
	FmgrInfo   *infuncs;		/* per attribute, for fast_convert */
	Oid		   *ioparams;
	char	   *convkind;		/* per attribute: 'j' json(b), 'd' domain, 's' */

	/*
	 * capture.c: the transaction in which the table last passed the check
	 * that it is neither a catalog nor one of dlq's tables, made by the
	 * statement trigger after every statement (each replayed row is one).
	 */
	LocalTransactionId bindable_lxid;

	/* executor state for one transaction, in a child of TopTransactionContext */
	LocalTransactionId lxid;
	EState	   *estate;
	ExprState **checkstate;
	IndexInfo **uniqueinfo;
} CaptureRel;

/* A predicted violation, in the shape of the error PostgreSQL would raise. */
typedef struct CaptureViolation
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;			/* or NULL */
	char	   *column;			/* or NULL */
	char	   *constraint;		/* or NULL */
} CaptureViolation;

/* The per-relation cache and constraint prediction (capture_predict.c). */

/* The cache entry of rel, with executor state for the current transaction. */
extern CaptureRel *dlq_predict_get_rel(Relation rel);

/*
 * Would the row in slot violate a constraint of rel?  Returns false and
 * fills *v with the error PostgreSQL would raise when it would.  oldslot is
 * the row being updated (NULL for an INSERT).
 */
extern bool dlq_predict_row(CaptureRel *entry, Relation rel, TupleTableSlot *slot,
							TupleTableSlot *oldslot, CaptureViolation *v);

/*
 * error_detail of a failure: {detail, schema, table, column, constraint}
 * and, when given, datatype; the fields PostgreSQL attaches to the error.
 */
extern Jsonb *dlq_error_detail_json(const char *detail, const char *schema,
									const char *table, const char *column,
									const char *constraint, bool with_datatype,
									const char *datatype);

/* error_detail of a predicted violation of rel. */
extern Jsonb *dlq_violation_detail(Relation rel, const CaptureViolation *v);

/* Replay in progress (reapply.c), as the capture trigger sees it. */

/*
 * Is dlq_reapply_row inserting a row into relid that it validated already?
 * The trigger then lets the row through unchecked.
 */
extern bool dlq_reapply_validated(Oid relid);

/*
 * Inside dlq_reapply_row, a violation the trigger finds on relid for the
 * replayed row itself is not diverted into a new message: it is kept for
 * dlq_reapply_row to report.  Returns false, keeping nothing, for any other
 * row (none being replayed, or one the replayed row's triggers write).
 */
extern bool dlq_reapply_keep_violation(Oid relid, const CaptureViolation *v);

#endif							/* DLQ_CAPTURE_INT_H */
