/*-------------------------------------------------------------------------
 *
 * version.h
 *	  Which schema version the library was built for, and whether the
 *	  database has it (version.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_VERSION_H
#define DLQ_VERSION_H

/* The version of dlq.control this library was built with (Makefile). */
#ifndef DLQ_EXTVERSION
#error "DLQ_EXTVERSION must be defined by the Makefile"
#endif

extern char *dlq_installed_version(void);
extern bool dlq_schema_current(void);
extern void dlq_require_current_schema(void);
extern char *dlq_schema_sql(const char *sql);

#endif							/* DLQ_VERSION_H */
