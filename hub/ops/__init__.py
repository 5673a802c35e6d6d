"""Operations on a whole hub (运维): backup, restore, moving the database to PostgreSQL."""
